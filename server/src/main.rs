//! `mintgate`: parse arguments, load config, start tracing, build the application, wait for a
//! signal. Everything else lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use mintgate_domain::TrustDomain;
use mintgate_domain::governance::GovernanceStore as _;
use mintgate_domain::policy::{Policy, PolicySource, Problem};
use mintgate_domain::store::CertificateStore;
use mintgate_server::audit::TrustedKeys;
use mintgate_server::config::{
    DEV_CERTS_DIR, DEV_DATABASE_URL, DEV_TRUST_DOMAIN, Overrides, TelemetryFile, load_policy_dir,
};
use mintgate_server::evidence::{self, ExportRequest};
use mintgate_server::telemetry::{LogFormat, Tracing};
use mintgate_server::{Application, Settings, clock::SystemClock};
use mintgate_store::SqlStore;

#[path = "cli/ca.rs"]
mod ca;

/// Exit code for bad configuration or usage (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "mintgate",
    version,
    about = "Short-lived X.509 client certificates for a service mesh, over mutual-TLS gRPC."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (gRPC with mutual TLS, plus HTTP health, CRL and metrics endpoints).
    Serve(ServeArgs),
    /// Write a development PKI (CAs, server, node and operator certificates) if missing.
    DevCerts {
        /// Where to write it.
        #[arg(long, default_value = DEV_CERTS_DIR)]
        dir: PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate(DbArgs),
    /// Inspect the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Evidence for auditors: export it from the database, verify it offline.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// Work with policy directories (Cedar: schema.cedarschema plus *.cedar files).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The issuing CA, an intermediate under an offline root: ask the root for it, import it.
    #[command(subcommand)]
    Ca(ca::CaCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory as `serve` would (strict mode against its schema, a unique
    /// @id per policy, known annotations, one trust domain). Prints every problem as
    /// DIR/FILE:LINE:COLUMN: MESSAGE and exits 64 if there is any; otherwise prints the policy
    /// version.
    Check {
        /// The policy directory.
        dir: PathBuf,
        /// The trust domain the policy must serve; without it, its policies must agree on one.
        #[arg(long)]
        trust_domain: Option<String>,
    },
    /// Compare a policy directory with the active policy version in the database. The server
    /// never replaces the active policy with its directory by itself: a change is proposed and
    /// approved (Admin/ProposePolicy). Prints a unified diff (active -> directory) and exits 1
    /// if they differ, 0 if not.
    Diff {
        /// The policy directory (with --dev and no DIR: the built-in dev policy).
        dir: Option<PathBuf>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// First-run mode: dev PKI in certs-dev/ (created if missing), SQLite ./mintgate.db, dev policy.
    #[arg(long)]
    dev: bool,
    /// Configuration file (mintgate.toml). Required without --dev.
    #[arg(long, env = "MINTGATE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "MINTGATE_DATABASE_URL")]
    database_url: Option<String>,
    /// gRPC listen address (default with --dev: 127.0.0.1:8443).
    #[arg(long, env = "MINTGATE_GRPC_ADDR")]
    grpc_addr: Option<std::net::SocketAddr>,
    /// HTTP listen address for /healthz, /readyz, /bundle.pem, /crl, /ocsp and /metrics
    /// (default with --dev: 127.0.0.1:8080).
    #[arg(long, env = "MINTGATE_HTTP_ADDR")]
    http_addr: Option<std::net::SocketAddr>,
    /// Policy directory (schema.cedarschema plus *.cedar files); with --dev, replaces the dev
    /// policy.
    #[arg(long, env = "MINTGATE_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    #[arg(long, env = "MINTGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export spans over OTLP/gRPC to this collector (http://host:4317); overrides
    /// `[telemetry] otlp_endpoint`. Off unless set.
    #[arg(long, env = "MINTGATE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Args)]
struct DbArgs {
    /// Use the --dev database (./mintgate.db).
    #[arg(long)]
    dev: bool,
    #[arg(long, env = "MINTGATE_DATABASE_URL", required_unless_present = "dev")]
    database_url: Option<String>,
}

impl DbArgs {
    fn url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| DEV_DATABASE_URL.to_owned())
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain, that it covers every certificate, revocation, block and request,
    /// and that every signed checkpoint holds; exits 1 naming the first broken link, the
    /// earliest records without an event, or the first checkpoint that does not hold.
    Verify {
        #[command(flatten)]
        db: DbArgs,
        /// An audit public key ("PUBLIC KEY" PEM, as `mintgate audit keys` prints it) that
        /// checkpoints must be signed by; repeat for several. Without it, the keys published
        /// in the database are used (which proves consistency, not who signed).
        #[arg(long = "public-key", value_name = "PEM_FILE")]
        public_keys: Vec<PathBuf>,
    },
    /// Print the audit public keys published in the database (PEM, each with its key id), to
    /// keep beside the database and give to `audit verify --public-key`.
    Keys(DbArgs),
    /// Write the audit trail as JSON lines (with hashes, so it can be re-verified).
    Export {
        #[command(flatten)]
        db: DbArgs,
        /// Output file (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EvidenceCommand {
    /// Write the evidence for a period into an empty directory, from the database (no server
    /// needed): the audit chain up to the period's end, its signed checkpoints and keys, the
    /// policy versions in force with their proposals and activations, the role bindings in
    /// force during the period, the CA certificate and CRL if given, a manifest of SHA-256
    /// hashes and controls.md. (Admin/ExportEvidence streams the same files from a server,
    /// with its own CA certificate and CRL.)
    Export {
        #[command(flatten)]
        db: DbArgs,
        /// Start of the period (RFC 3339, included).
        #[arg(long)]
        since: String,
        /// End of the period (RFC 3339, included).
        #[arg(long)]
        until: String,
        /// The directory to write (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// The CA certificate (PEM) to include as ca.pem.
        #[arg(long, value_name = "PEM_FILE")]
        ca_cert: Option<PathBuf>,
        /// The CRL to include as crl.der: the file a running server's /crl serves (DER, or PEM),
        /// fetched by the auditor (curl -o crl.der http://SERVER/crl). It must verify under
        /// --ca-cert. The export never needs the CA's private key.
        #[arg(long, value_name = "CRL_FILE", requires = "ca_cert")]
        crl: Option<PathBuf>,
    },
    /// Re-check an evidence directory with no database and no server: the manifest, the audit
    /// chain, every checkpoint's signature and hash, the policy versions, the CRL's signature
    /// under ca.pem. Exits 1 naming the first thing that fails.
    Verify {
        dir: PathBuf,
        /// An audit public key ("PUBLIC KEY" PEM) that checkpoints must be signed by; repeat
        /// for several. Without it, the export's own audit-keys.pem is used (which proves
        /// consistency, not who signed).
        #[arg(long = "public-key", value_name = "PEM_FILE")]
        public_keys: Vec<PathBuf>,
    },
    /// List every role binding, when it ends and when its holder last acted (an admin
    /// binding: the last break-glass use), as tab-separated lines for a periodic access review.
    AccessReview(DbArgs),
}

/// jemalloc for the whole process: Rust's allocations and, through its unprefixed `malloc` and
/// `free`, SQLite's (README, design notes).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mintgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mintgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::DevCerts { dir } => {
            write_dev_pki(&dir)?;
            println!("dev PKI in {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca(command) => ca::ca_command(command),
        Command::Migrate(db) => {
            let store = SqlStore::connect(&db.url()).await.context("database")?;
            store.migrate().await.context("migrate")?;
            println!("migrated");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify { db, public_keys }) => {
            let trusted = if public_keys.is_empty() {
                TrustedKeys::Stored
            } else {
                TrustedKeys::Given(read_public_keys(&public_keys)?)
            };
            let store = SqlStore::connect(&db.url()).await.context("database")?;
            let verification = mintgate_server::audit::verify(&store, trusted)
                .await
                .context("reading the audit trail")?;
            store.close().await;
            println!("{verification}");
            Ok(if verification.is_sound() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Audit(AuditCommand::Keys(db)) => {
            let store = SqlStore::connect(&db.url()).await.context("database")?;
            let keys = store.audit_keys().await.context("reading the audit keys")?;
            store.close().await;
            for key in &keys {
                println!("# audit key {} ({})", key.key_id, key.algorithm);
                print!("{}", mintgate_ca::audit_key_pem(key));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Export { db, output }) => {
            let store = SqlStore::connect(&db.url()).await.context("database")?;
            let chain = store
                .audit_chain()
                .await
                .context("reading the audit trail")?;
            let mut out = String::new();
            for event in &chain {
                out.push_str(&serde_json::to_string(event)?);
                out.push('\n');
            }
            match output {
                Some(path) => std::fs::write(&path, out)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{out}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Evidence(EvidenceCommand::Export {
            db,
            since,
            until,
            out,
            ca_cert,
            crl,
        }) => {
            let read = |flag: &str, path: &Path| {
                std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
            };
            let crl = match crl {
                Some(path) => Some(
                    mintgate_ca::crl_der(&read("--crl", &path)?)
                        .with_context(|| format!("--crl {}", path.display()))?,
                ),
                None => None,
            };
            let request = ExportRequest {
                since: parse_time("--since", &since)?,
                until: parse_time("--until", &until)?,
                ca_cert: ca_cert.map(|p| read("--ca-cert", &p)).transpose()?,
                crl,
                now: time::OffsetDateTime::now_utc(),
            };
            let store = SqlStore::connect(&db.url()).await.context("database")?;
            let exported = evidence::export_to_dir(&store, &request, &out).await;
            store.close().await;
            let manifest = exported.context("evidence export")?;
            let range =
                |r: Option<evidence::SeqRange>| r.map_or("none".to_owned(), |r| r.to_string());
            println!(
                "evidence in {}: {} files, events {} exported, {} in the period",
                out.display(),
                manifest.files.len() + 1,
                range(manifest.exported),
                range(manifest.in_period)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Evidence(EvidenceCommand::Verify { dir, public_keys }) => {
            let trust = if public_keys.is_empty() {
                evidence::Trust::Exported
            } else {
                evidence::Trust::Given(read_public_keys(&public_keys)?)
            };
            match evidence::verify(&dir, trust) {
                Ok(verified) => {
                    println!("{verified}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    println!("evidence does not verify: {failure}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Evidence(EvidenceCommand::AccessReview(db)) => {
            let store = SqlStore::connect(&db.url()).await.context("database")?;
            let review = evidence::access_review(&store, time::OffsetDateTime::now_utc()).await;
            store.close().await;
            print!(
                "{}",
                review.context("reading role bindings and the audit trail")?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Check { dir, trust_domain }) => {
            Ok(policy_check(&dir, trust_domain.as_deref()))
        }
        Command::Policy(PolicyCommand::Diff { dir, db }) => policy_diff(dir.as_deref(), &db).await,
    }
}

/// The audit public keys in the `--public-key` files.
fn read_public_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<mintgate_domain::audit::AuditKey>> {
    paths
        .iter()
        .map(|path| {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("--public-key {}", path.display()))?;
            mintgate_ca::audit_key_from_pem(&pem)
                .with_context(|| format!("--public-key {}", path.display()))
        })
        .collect()
}

fn parse_time(flag: &str, text: &str) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{flag} {text}: not an RFC 3339 time (2025-01-31T00:00:00Z)"))
}

/// `mintgate policy diff`: the directory against the active version.
async fn policy_diff(dir: Option<&Path>, db: &DbArgs) -> anyhow::Result<ExitCode> {
    let (source, name) = match dir {
        Some(dir) => (load_policy_dir(dir)?, dir.display().to_string()),
        None if db.dev => (PolicySource::dev(), "the built-in dev policy".to_owned()),
        None => anyhow::bail!("give the policy directory to compare (or --dev)"),
    };
    let version = Policy::load(&source, None)
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?
        .version()
        .to_owned();
    let store = SqlStore::connect(&db.url()).await.context("database")?;
    let active = store
        .active_policy()
        .await
        .context("reading the active policy");
    store.close().await;
    let Some((activation, stored)) = active? else {
        println!("no policy is active yet: the first server to start activates its directory");
        return Ok(ExitCode::FAILURE);
    };
    if stored.version == version {
        println!("{name} is the active policy version {version}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{name} (version {version}) differs from the active version {} (activated by {} at {}):",
        stored.version, activation.activated_by, activation.activated_at
    );
    print!(
        "{}",
        mintgate_domain::governance::diff(&stored.source, &source)
    );
    Ok(ExitCode::FAILURE)
}

/// `mintgate policy check`: every problem on its own line, each naming its file.
fn policy_check(dir: &Path, trust_domain: Option<&str>) -> ExitCode {
    let td = match trust_domain.map(TrustDomain::parse).transpose() {
        Ok(td) => td,
        Err(e) => {
            eprintln!("mintgate: --trust-domain: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let source = match load_policy_dir(dir) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("mintgate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let in_dir = |p: &Problem| Problem {
        file: dir.join(&p.file).display().to_string(),
        ..p.clone()
    };
    match Policy::load(&source, td.as_ref()) {
        Ok(policy) => {
            for w in policy.warnings() {
                eprintln!("warning: {}", in_dir(w));
            }
            let files = source.files.len();
            println!(
                "{}: valid, {} policies in {files} file{}; version {}",
                dir.display(),
                policy.policy_count(),
                if files == 1 { "" } else { "s" },
                policy.version()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for p in &e.problems {
                eprintln!("{}", in_dir(p));
            }
            let n = e.problems.len();
            eprintln!(
                "mintgate: {}: {n} problem{}; the policy is refused whole",
                dir.display(),
                if n == 1 { "" } else { "s" }
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        database_url: args.database_url,
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        policy_dir: args.policy_dir,
        telemetry: args.otlp_endpoint.map(|e| TelemetryFile {
            otlp_endpoint: Some(e),
        }),
    };
    let settings = if args.dev {
        let dir = Path::new(DEV_CERTS_DIR);
        write_dev_pki(dir)?;
        Settings::dev(dir, &overrides)
    } else {
        match args.config {
            Some(path) => Settings::load(Some(&path), &overrides),
            None => {
                eprintln!(
                    "mintgate: serve needs --config mintgate.toml (or --dev for a first run)"
                );
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        }
    };
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mintgate: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let telemetry = match Tracing::init(args.log_format, settings.otlp_endpoint.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mintgate: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    raise_open_file_limit();
    let dev = settings.dev;
    let app = match Application::build(settings, Arc::new(SystemClock)).await {
        Ok(app) => app,
        Err(e) if e.is_config() => {
            eprintln!("mintgate: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(grpc = %app.grpc_addr(), http = %app.http_addr(), "mintgate serving");
    if dev {
        print_dev_tour(app.grpc_addr(), app.http_addr());
    }
    app.run(shutdown_signal()).await?;
    tracing::info!("mintgate stopped");
    telemetry.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn write_dev_pki(dir: &Path) -> anyhow::Result<()> {
    let td = TrustDomain::parse(DEV_TRUST_DOMAIN)?;
    if dir.join("ca.pem").exists() {
        return Ok(());
    }
    mintgate_ca::write_dev_pki(dir, &td)
        .with_context(|| format!("writing the dev PKI to {}", dir.display()))?;
    Ok(())
}

/// Prints what to try next. A closed stdout (`serve --dev | head`) must not stop the server, so
/// a failed write is ignored rather than `println!`'s panic.
fn print_dev_tour(grpc: std::net::SocketAddr, http: std::net::SocketAddr) {
    use std::io::Write as _;
    let tls = "-cacert certs-dev/ca.pem -cert certs-dev/alice.pem -key certs-dev/alice.key";
    let _ = writeln!(
        std::io::stdout(),
        "\nMintgate is running in --dev mode (trust domain {DEV_TRUST_DOMAIN}).\n\
         Try next, in another terminal:\n\n  \
         curl http://{http}/readyz\n  \
         grpcurl {tls} {grpc} list\n  \
         grpcurl {tls} {grpc} describe mintgate.v1.Provisioning\n  \
         grpcurl {tls} -d '{{\"request_id\":\"tok-1\",\"spiffe_id\":\"spiffe://{DEV_TRUST_DOMAIN}/joined/demo\"}}' {grpc} mintgate.v1.Admin/CreateJoinToken\n\n\
         The README's tour continues with an openssl CSR and Provisioning/Enroll.\n"
    );
}

/// Every subscribed sidecar holds a connection: lift the soft RLIMIT_NOFILE to the hard limit.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "open-file limit not raised"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
