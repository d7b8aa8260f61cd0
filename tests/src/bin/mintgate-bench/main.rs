//! `mintgate-bench`: holds Mintgate against the physical limit and a peer (issue 5, DESIGN §10).
//!
//! 1. crypto limit: CSR verification + signing with the server's own signer, per core;
//! 2. issuance end to end over mTLS gRPC with a durable database (SQLite; PostgreSQL with
//!    `--postgres`), and durable issuances per database commit;
//! 3. revocation fan-out to N mTLS subscribers against a bare tokio-rustls floor;
//! 4. server memory per idle subscriber;
//! 5. cfssl's sign endpoint with the same CSRs, when `cfssl` is installed;
//! 6. server CPU per issuance (a child `mintgate serve`) ÷ crypto CPU per issuance;
//! - P6: Revoke, CheckStatus, the CRL and memory with a million revoked entries;
//! - P7: a renewal storm against the server's load shedding.
//!
//! `mintgate-bench ca-backends` compares the CA key in a PKCS#11 token with a key file.
//!
//! It is a binary of the `mintgate-tests` package so that it reuses the end-to-end harness (the
//! in-process `TestServer`, the ephemeral PKI, the CSR helpers) instead of growing a second one.
//! The table goes to stdout, progress bars to stderr, the figures to `--json`.

mod ca_backends;
mod child;
mod cpu;
mod crypto;
mod decide;
mod fanout;
mod floor;
mod issuance;
mod peer;
mod replicas;
mod report;
mod revoked;
mod storm;
mod support;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use mintgate_tests::Backend;

use crate::report::{Machine, Report};

/// Subscribers of the cross-replica run at most (both replicas run in this process).
const REPLICA_SUBSCRIBERS: usize = 2000;

#[derive(Parser)]
#[command(
    name = "mintgate-bench",
    about = "Mintgate against the physical limit and a peer (see docs/benchmarks.md).",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    #[command(flatten)]
    options: Options,
}

#[derive(Subcommand)]
enum Internal {
    /// The bare tokio-rustls floor of the fan-out benchmark (started by the benchmark itself).
    #[command(hide = true)]
    FloorServer(floor::FloorArgs),
    /// Issuance with the CA key in a PKCS#11 token (SoftHSM2) against a key file: the raw
    /// signing rate and issuance end to end, side by side.
    CaBackends(ca_backends::CaArgs),
}

#[derive(Args)]
struct Options {
    /// Where the JSON results go.
    #[arg(long, default_value = "mintgate-bench.json")]
    json: PathBuf,
    /// CSR checks + signatures in the crypto benchmark, over all threads.
    #[arg(long, default_value_t = 40_000)]
    crypto_ops: usize,
    /// Threads for the crypto benchmark [default: the available cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Certificates issued end to end (and signed by cfssl).
    #[arg(long, default_value_t = 10_000)]
    issuances: usize,
    /// Concurrent clients, each on its own connection (issuance and cfssl). Enough that the
    /// store's group commit has work to gather: each client has one write in flight at most.
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// Revocation subscribers, each on its own mTLS connection.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Revocations fanned out (each measured at every subscriber).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also measure issuance on PostgreSQL (MINTGATE_TEST_POSTGRES_URL, default
    /// postgres://postgres@127.0.0.1:5432/test; one fresh database).
    #[arg(long)]
    postgres: bool,
    /// The `mintgate` server binary [default: next to this one].
    #[arg(long)]
    mintgate: Option<PathBuf>,
    /// Workloads asking at once in the renewal storm (P7).
    #[arg(long, default_value_t = 100_000)]
    storm_workloads: usize,
    /// Nodes (agents, each its own connection) they ask through.
    #[arg(long, default_value_t = 1000)]
    storm_nodes: usize,
    /// Revoked, unexpired entries in the log for P6.
    #[arg(long, default_value_t = 1_000_000)]
    revoked_entries: u64,
    /// Revocations measured in each phase of P6. A p99 of 5,000 is its 50th slowest; of 1,000,
    /// its 10th, which moved the ratio between 1.08 and 1.37 over six runs of one build.
    #[arg(long, default_value_t = 5000)]
    revoked_rounds: usize,
    /// The cfssl binary; benchmark 5 is skipped when it does not run.
    #[arg(long, default_value = "cfssl")]
    cfssl: PathBuf,
}

/// The `mintgate` binary's allocator, so that the server this process runs (benchmark 2) runs
/// as it does there.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let options = match cli.internal {
        Some(Internal::FloorServer(args)) => return runtime.block_on(floor::serve(args)),
        Some(Internal::CaBackends(args)) => return ca_backends::run(&args, &runtime),
        None => cli.options,
    };
    // Every subscriber holds a connection, and so does its server side (a child inherits this).
    let open_files = rlimit::increase_nofile_limit(u64::MAX)?;
    if options.subscribers as u64 + 256 > open_files {
        bail!(
            "{} subscribers need about {} open files; the limit is {open_files}",
            options.subscribers,
            options.subscribers + 256
        );
    }
    let mintgate = match options.mintgate.clone() {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("mintgate"),
    };
    if !mintgate.exists() {
        bail!(
            "{} is missing: build it (cargo build --release -p mintgate-server) or pass --mintgate",
            mintgate.display()
        );
    }
    let machine = Machine::read(open_files);
    let csrs: Arc<[String]> = support::csrs(options.issuances.max(1)).into();
    let threads = options.threads.unwrap_or(machine.cores).max(1);
    let crypto = crypto::run(&csrs, threads, options.crypto_ops)?;
    let decision_us = decide::run(options.crypto_ops)?;

    let report = runtime.block_on(async {
        let mut issuance = vec![
            issuance::run(Backend::Sqlite, csrs.clone(), options.clients, crypto.total).await?,
        ];
        let mut postgres_skipped = None;
        if options.postgres {
            if mintgate_tests::db::postgres_available().await {
                issuance.push(
                    issuance::run(
                        Backend::Postgres,
                        csrs.clone(),
                        options.clients,
                        crypto.total,
                    )
                    .await?,
                );
            } else {
                postgres_skipped = Some("skipped (PostgreSQL unreachable)".to_owned());
            }
        }
        let mut server_cpu = vec![
            cpu::run(
                &mintgate,
                Backend::Sqlite,
                None,
                csrs.clone(),
                options.clients,
                (crypto.per_core, decision_us),
            )
            .await
            .context("server CPU, SQLite")?,
        ];
        if options.postgres && postgres_skipped.is_none() {
            let db = mintgate_tests::db::TestDatabase::create(Backend::Postgres).await;
            server_cpu.push(
                cpu::run(
                    &mintgate,
                    Backend::Postgres,
                    Some(&db.url),
                    csrs.clone(),
                    options.clients,
                    (crypto.per_core, decision_us),
                )
                .await
                .context("server CPU, PostgreSQL")?,
            );
            db.drop_database().await;
        }
        let revoked = revoked::run(&mintgate, options.revoked_entries, options.revoked_rounds)
            .await
            .context("P6, the revoked set")?;
        let storm_csrs: Arc<[String]> = support::csrs_for("storm", options.storm_workloads).into();
        let storm = storm::run(
            &mintgate,
            csrs.clone(),
            storm_csrs,
            options.clients,
            options.storm_nodes,
        )
        .await
        .context("P7, the renewal storm")?;
        let (fanout, memory) = fanout::run(&mintgate, options.subscribers, options.rounds)
            .await
            .context("fan-out and memory")?;
        let replicas = if options.postgres && postgres_skipped.is_none() {
            let n = options.subscribers.min(REPLICA_SUBSCRIBERS);
            Some(
                replicas::run(n, options.rounds)
                    .await
                    .context("cross-replica fan-out")?,
            )
        } else {
            None
        };
        let peer = peer::run(
            &options.cfssl,
            csrs.clone(),
            options.clients,
            issuance[0].per_second,
        )
        .await
        // A peer that would not sign leaves the rest of the run standing: the table says why.
        .unwrap_or_else(|e| peer::Peer::Skipped {
            reason: format!("failed: {e:#}"),
        });
        anyhow::Ok(Report {
            // The binary by name, not by where this machine's target directory is.
            command: std::iter::once("mintgate-bench".to_owned())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" "),
            machine,
            crypto,
            issuance,
            postgres_skipped,
            fanout,
            memory,
            replicas,
            peer,
            server_cpu,
            revoked,
            storm,
        })
    })?;
    print!("{}", report.table());
    std::fs::write(&options.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", options.json.display()))?;
    println!("results: {}", options.json.display());
    Ok(())
}
