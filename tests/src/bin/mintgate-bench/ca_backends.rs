//! `mintgate-bench ca-backends`: what keeping the issuing CA's key in a PKCS#11 token costs,
//! against a key file, on the same machine in one run: the raw rate (CSR check + signature,
//! benchmark 1's loop) and issuance end to end (benchmark 2 on SQLite), each with the file key and
//! with a key in SoftHSM2 (a token made for the run, signing through the server's session pool).
//!
//! SoftHSM reads its configuration once per process, so the benchmark runs itself again with a
//! token directory of its own (`mintgate_ca::softhsm::isolate`) and measures in that child.

use std::process::Command;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use mintgate_ca::softhsm;
use mintgate_ca::{CertificateAuthority, Pkcs11Config, Pkcs11Key, generate_pki_with_issuing_key};
use mintgate_domain::TrustDomain;
use mintgate_tests::{Backend, Options, TRUST_DOMAIN};
use serde::Serialize;
use time::OffsetDateTime;

use crate::crypto::{self, Crypto};
use crate::issuance::{self, Issuance};
use crate::support;

#[derive(clap::Args)]
pub struct CaArgs {
    /// Where the JSON results go.
    #[arg(long, default_value = "mintgate-bench-ca.json")]
    json: std::path::PathBuf,
    /// CSR checks + signatures per backend in the raw benchmark, over all threads.
    #[arg(long, default_value_t = 20_000)]
    crypto_ops: usize,
    /// Threads for the raw benchmark [default: the available cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Certificates issued end to end per backend.
    #[arg(long, default_value_t = 5_000)]
    issuances: usize,
    /// Concurrent clients in the end-to-end run.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// PKCS#11 sessions the key signs on (`[ca.pkcs11] sessions`).
    #[arg(long, default_value_t = mintgate_ca::pkcs11::DEFAULT_SESSIONS)]
    sessions: usize,
}

#[derive(Debug, Serialize)]
struct CaReport {
    command: String,
    threads: usize,
    sessions: usize,
    raw_file: Crypto,
    raw_pkcs11: Crypto,
    issuance_file: Issuance,
    issuance_pkcs11: Issuance,
}

/// Runs the comparison in a child with SoftHSM of its own, or (in that child) measures.
pub fn run(args: &CaArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let Some(hsm) = softhsm::child() else {
        if !softhsm::available() {
            bail!("softhsm2 is not installed ({} missing)", softhsm::MODULE);
        }
        let mut child = Command::new(std::env::current_exe()?);
        child.args(std::env::args_os().skip(1));
        let _tokens = softhsm::isolate(&mut child)?;
        let status = child.status().context("running the benchmark again")?;
        if !status.success() {
            bail!("the measuring run failed: {status}");
        }
        return Ok(());
    };
    let config = Pkcs11Config {
        sessions: args.sessions,
        ..hsm.token("mintgate-bench", "issuing-ca")?
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let csrs: Arc<[String]> = support::csrs(args.issuances.max(1)).into();

    let raw_file = crypto::run(&csrs, threads, args.crypto_ops)?;
    let (key, _) = Pkcs11Key::open_or_generate(&config)?;
    let td = TrustDomain::parse(TRUST_DOMAIN)?;
    let pki = generate_pki_with_issuing_key(&td, OffsetDateTime::now_utc(), key)?;
    let ca =
        CertificateAuthority::from_pem_with_key(&pki.ca.cert_pem, Pkcs11Key::open(&config)?, None)?;
    let raw_pkcs11 = crypto::run_with(&ca, &csrs, threads, args.crypto_ops)?;

    let (issuance_file, issuance_pkcs11) = runtime.block_on(async {
        let file =
            issuance::run(Backend::Sqlite, csrs.clone(), args.clients, raw_file.total).await?;
        let pkcs11 = issuance::run_with(
            Options {
                pkcs11: Some(config.clone()),
                ..issuance::assessed_not_held(Backend::Sqlite)
            },
            csrs.clone(),
            args.clients,
            raw_pkcs11.total,
        )
        .await?;
        anyhow::Ok((file, pkcs11))
    })?;

    let report = CaReport {
        command: std::iter::once("mintgate-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        threads,
        sessions: args.sessions,
        raw_file,
        raw_pkcs11,
        issuance_file,
        issuance_pkcs11,
    };
    println!(
        "CA key backends ({} threads, {} PKCS#11 sessions)",
        threads, args.sessions
    );
    println!("| | file | pkcs11 (SoftHSM2) | pkcs11 / file |");
    println!("|---|---|---|---|");
    let row = |what: &str, file: f64, pkcs11: f64| {
        println!(
            "| {what} | {file:.0}/s | {pkcs11:.0}/s | {:.2} |",
            pkcs11 / file
        );
    };
    row(
        "CSR check + sign (raw)",
        report.raw_file.total,
        report.raw_pkcs11.total,
    );
    row(
        "issuance end to end (SQLite)",
        report.issuance_file.per_second,
        report.issuance_pkcs11.per_second,
    );
    println!(
        "| issuance p50 latency | {:.1} ms | {:.1} ms | |",
        report.issuance_file.latency.p50_ms, report.issuance_pkcs11.latency.p50_ms
    );
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("results: {}", args.json.display());
    Ok(())
}
