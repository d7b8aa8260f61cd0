//! `mintgate-evidence-bench`: how long `mintgate evidence export` and `evidence verify` take on
//! a long audit chain (issue 14: 1,000,000 events), and how much memory each needs (they read
//! the chain a page or a line at a time, so it should not grow with the chain).
//!
//! It fills a fresh database (SQLite; PostgreSQL with `--postgres`) with issuance-like audit
//! events through the store, a signed checkpoint every `--checkpoint-every` events, then runs the
//! `mintgate` binary's `evidence export` over the whole chain and `evidence verify` on what it
//! wrote, each under `/usr/bin/time` for its peak resident memory. Figures go to stdout and to
//! docs/benchmarks.md by hand; nothing asserts them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Parser;
use mintgate_ca::FileAuditSigner;
use mintgate_domain::audit::AuditEvent;
use mintgate_domain::store::CertificateStore as _;
use mintgate_store::SqlStore;
use mintgate_tests::Backend;
use mintgate_tests::db::TestDatabase;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Parser)]
#[command(
    name = "mintgate-evidence-bench",
    about = "Evidence export and verify on a long chain."
)]
struct Options {
    /// Audit events in the chain.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// A signed checkpoint every this many events.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_every: u64,
    /// Events per write transaction while filling.
    #[arg(long, default_value_t = 2_000)]
    batch: u64,
    /// Use PostgreSQL (MINTGATE_TEST_POSTGRES_URL; a fresh database) instead of SQLite.
    #[arg(long)]
    postgres: bool,
    /// The `mintgate` binary [default: next to this one].
    #[arg(long)]
    mintgate: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}

async fn run(options: Options) -> anyhow::Result<()> {
    let mintgate = match options.mintgate.clone() {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("mintgate"),
    };
    if !mintgate.exists() {
        bail!("{} is missing: pass --mintgate", mintgate.display());
    }
    let backend = if options.postgres {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let db = TestDatabase::create(backend).await;
    let store = SqlStore::connect(&db.url).await.context("database")?;
    store.migrate().await.context("migrate")?;
    let signer = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&[7; 32]))?;

    let start = OffsetDateTime::now_utc().replace_nanosecond(0)? - time::Duration::days(30);
    let filling = Instant::now();
    let mut written = 0;
    while written < options.events {
        let n = options.batch.min(options.events - written);
        let events = (written..written + n).map(|i| event(i, start)).collect();
        store.append_audit(events).await?;
        written += n;
        if written % options.checkpoint_every == 0 || written == options.events {
            let at = start + time::Duration::seconds(i64::try_from(written)? / 2);
            store.write_checkpoint(&signer, at).await?;
        }
    }
    let fill = filling.elapsed();
    store.close().await;

    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("evidence");
    let since = start.format(&Rfc3339)?;
    let until = (start + time::Duration::days(31)).format(&Rfc3339)?;
    let export = timed(
        &mintgate,
        &[
            "evidence",
            "export",
            "--database-url",
            &db.url,
            "--since",
            &since,
            "--until",
            &until,
            "--out",
            path(&out)?,
        ],
    )?;
    let events_bytes = std::fs::metadata(out.join("audit-events.jsonl"))?.len();
    let verify = timed(&mintgate, &["evidence", "verify", path(&out)?])?;
    db.drop_database().await;

    println!(
        "{} audit events on {backend:?}, a checkpoint every {}; audit-events.jsonl {:.0} MiB",
        options.events,
        options.checkpoint_every,
        events_bytes as f64 / 1024.0 / 1024.0
    );
    println!("fill (through the store)  {:>8.1} s", fill.as_secs_f64());
    for (what, run) in [("evidence export", &export), ("evidence verify", &verify)] {
        println!(
            "{what:<25} {:>8.1} s  peak RSS {}",
            run.seconds,
            run.max_rss_kib
                .map_or("unknown (no /usr/bin/time)".to_owned(), |k| format!(
                    "{:.0} MiB",
                    k as f64 / 1024.0
                ))
        );
    }
    Ok(())
}

/// One issuance-like event (the fields a `certificate.issued` event carries).
fn event(i: u64, start: OffsetDateTime) -> AuditEvent {
    let at = start.unix_timestamp() + i64::try_from(i / 2).unwrap_or(i64::MAX);
    AuditEvent {
        seq: 0,
        at,
        actor: "spiffe://dev.mintgate.local/node/dev-node-1".into(),
        action: "certificate.issued".into(),
        subject: format!("certificate:{i:032x}"),
        spiffe_id: Some(format!(
            "spiffe://dev.mintgate.local/workload/ns/app-{}",
            i % 500
        )),
        dns_names: vec![format!("app-{}.ns.svc.cluster.local", i % 500)],
        key_type: Some("ECDSA_P256".into()),
        not_before: Some(at - 30),
        not_after: Some(at + 3600),
        policy_version: Some("0".repeat(64)),
        policy_rule: Some("workloads".into()),
        request_id: Some(format!("req-{i}")),
        detail: None,
    }
}

struct Run {
    seconds: f64,
    max_rss_kib: Option<u64>,
}

/// Runs `mintgate ARGS` (under `/usr/bin/time` when there is one); fails if it does.
fn timed(mintgate: &Path, args: &[&str]) -> anyhow::Result<Run> {
    let time = Path::new("/usr/bin/time");
    let mut command = if time.exists() {
        let mut c = std::process::Command::new(time);
        c.args(["-f", "maxrss_kib=%M"]).arg(mintgate);
        c
    } else {
        std::process::Command::new(mintgate)
    };
    let started = Instant::now();
    let output = command.args(args).output()?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "mintgate {}: {}{stderr}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let max_rss_kib = stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|v| v.trim().parse().ok());
    Ok(Run {
        seconds,
        max_rss_kib,
    })
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("a temporary path that is not UTF-8")
}
