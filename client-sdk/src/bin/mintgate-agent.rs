//! `mintgate-agent`: the sidecar that keeps a workload's certificate and trust bundle fresh on
//! disk and stops serving the certificate the moment it is revoked. See `mintgate_sdk::agent`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mintgate_sdk::agent::{AgentConfig, AgentExit, run};
use mintgate_sdk::workload_api::{AgentWorkloadApi, RegistrationEntry, Selector};
use mintgate_sdk::{Endpoint, RenewalPolicy, SystemClock};
use serde::Deserialize;

/// Exit code for a configuration problem.
const EXIT_CONFIG: u8 = 64;
/// Exit code when the agent's own certificate was revoked or expired (fail closed), or its
/// issuing CA was revoked and enrolling again was refused.
const EXIT_REVOKED: u8 = 3;

/// Keeps a workload certificate (cert.pem, key.pem, bundle.pem) fresh in --out, renewing it
/// before it expires, replacing bundle.pem whenever Mintgate's trust bundle changes, removing
/// the certificate if it is revoked, and enrolling again if its issuing CA is revoked.
#[derive(Debug, Parser)]
#[command(name = "mintgate-agent", version)]
struct Args {
    /// A TOML file with any of the options below (flags win).
    #[arg(long, env = "MINTGATE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Use the dev PKI in certs-dev/ and the server at 127.0.0.1:8443.
    #[arg(long)]
    dev: bool,
    /// Mintgate's gRPC address, host:port; several replicas separated by commas (the agent
    /// fails over between them).
    #[arg(long, env = "MINTGATE_AGENT_SERVER")]
    server: Option<String>,
    /// A name in the server's certificate.
    #[arg(long, env = "MINTGATE_AGENT_SERVER_NAME")]
    server_name: Option<String>,
    /// Mintgate's CA bundle (PEM).
    #[arg(long, env = "MINTGATE_AGENT_CA")]
    ca: Option<PathBuf>,
    /// The node (bootstrap) certificate and key (PEM).
    #[arg(long, env = "MINTGATE_AGENT_NODE_CERT")]
    node_cert: Option<PathBuf>,
    #[arg(long, env = "MINTGATE_AGENT_NODE_KEY")]
    node_key: Option<PathBuf>,
    /// The SPIFFE ID to obtain.
    #[arg(long, env = "MINTGATE_AGENT_SPIFFE_ID")]
    spiffe_id: Option<String>,
    /// A one-time join token, where policy asks for one.
    #[arg(long, env = "MINTGATE_AGENT_JOIN_TOKEN")]
    join_token: Option<String>,
    /// A file holding the workload's Kubernetes projected service-account token, where policy
    /// asks for one; read again for each enrollment.
    #[arg(long, env = "MINTGATE_AGENT_SERVICE_ACCOUNT_TOKEN_FILE")]
    service_account_token_file: Option<PathBuf>,
    /// Where cert.pem, key.pem and bundle.pem are written.
    #[arg(long, env = "MINTGATE_AGENT_OUT")]
    out: Option<PathBuf>,
    /// Certificate lifetime to ask for, in seconds (default: the policy maximum).
    #[arg(long)]
    ttl_seconds: Option<u64>,
    /// A command run after each rotation and trust bundle change (split on whitespace).
    #[arg(long)]
    hook: Option<String>,
    /// A process sent SIGHUP after each rotation and trust bundle change.
    #[arg(long)]
    signal_pid: Option<u32>,
    /// Serve GET /healthz on this address.
    #[arg(long, env = "MINTGATE_AGENT_HEALTH_ADDR")]
    health_addr: Option<SocketAddr>,
    /// Serve the SPIFFE Workload API on this Unix socket (e.g. /run/mintgate/agent.sock).
    #[arg(long, env = "MINTGATE_AGENT_WORKLOAD_API")]
    workload_api: Option<PathBuf>,
    /// Which processes get the identity over the Workload API: unix:uid:<n>, unix:gid:<n> or
    /// unix:path:<executable>; repeatable, all must match. Required with --workload-api.
    #[arg(long = "workload-selector")]
    workload_selectors: Vec<String>,
    /// Another identity the agent serves over the Workload API, with its own key and renewal:
    /// `<spiffe id>=<selector>[,<selector>...]`; repeatable.
    #[arg(long = "workload-entry")]
    workload_entries: Vec<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

/// The config file: the same options as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    server: Option<String>,
    server_name: Option<String>,
    ca: Option<PathBuf>,
    node_cert: Option<PathBuf>,
    node_key: Option<PathBuf>,
    spiffe_id: Option<String>,
    join_token: Option<String>,
    service_account_token_file: Option<PathBuf>,
    out: Option<PathBuf>,
    ttl_seconds: Option<u64>,
    hook: Option<String>,
    signal_pid: Option<u32>,
    health_addr: Option<SocketAddr>,
    workload_api: Option<PathBuf>,
    #[serde(default)]
    workload_selectors: Vec<String>,
    #[serde(default)]
    workload_entries: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_json);
    let config = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mintgate-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mintgate-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match runtime.block_on(run(config, Arc::new(SystemClock), shutdown)) {
        Ok(AgentExit::Shutdown) => ExitCode::SUCCESS,
        Ok(
            AgentExit::Revoked { .. } | AgentExit::IssuerRevoked { .. } | AgentExit::Expired { .. },
        ) => ExitCode::from(EXIT_REVOKED),
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            ExitCode::FAILURE
        }
    }
}

fn config(args: Args) -> Result<AgentConfig, String> {
    let file: FileOptions = match &args.config {
        Some(path) => {
            let text = read(path)?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => FileOptions::default(),
    };
    let dev = |p: &str| args.dev.then(|| PathBuf::from(p));
    let required = |v: Option<PathBuf>, name: &str| v.ok_or(format!("--{name} is required"));
    let server = args
        .server
        .or(file.server)
        .or_else(|| args.dev.then(|| "127.0.0.1:8443".to_owned()))
        .ok_or("--server is required")?;
    let ca = required(
        args.ca.or(file.ca).or_else(|| dev("certs-dev/ca.pem")),
        "ca",
    )?;
    let node_cert = required(
        args.node_cert
            .or(file.node_cert)
            .or_else(|| dev("certs-dev/node.pem")),
        "node-cert",
    )?;
    let node_key = required(
        args.node_key
            .or(file.node_key)
            .or_else(|| dev("certs-dev/node.key")),
        "node-key",
    )?;
    let hook = args
        .hook
        .or(file.hook)
        .map(|h| h.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
    Ok(AgentConfig {
        endpoint: Endpoint {
            url: server
                .split(',')
                .map(|one| format!("https://{}", one.trim()))
                .collect::<Vec<_>>()
                .join(","),
            server_name: args
                .server_name
                .or(file.server_name)
                .unwrap_or_else(|| "localhost".to_owned()),
        },
        ca_pem: read(&ca)?,
        node_cert_pem: read(&node_cert)?,
        node_key_pem: read(&node_key)?,
        spiffe_id: args
            .spiffe_id
            .or(file.spiffe_id)
            .ok_or("--spiffe-id is required")?,
        join_token: args.join_token.or(file.join_token),
        service_account_token_file: args
            .service_account_token_file
            .or(file.service_account_token_file),
        out_dir: required(args.out.or(file.out), "out")?,
        policy: RenewalPolicy {
            ttl: args
                .ttl_seconds
                .or(file.ttl_seconds)
                .map(Duration::from_secs),
            ..RenewalPolicy::default()
        },
        hook,
        signal_pid: args.signal_pid.or(file.signal_pid),
        health_addr: args.health_addr.or(file.health_addr),
        max_staleness: Duration::from_secs(60),
        workload_api: workload_api(
            args.workload_api.or(file.workload_api),
            if args.workload_selectors.is_empty() {
                file.workload_selectors
            } else {
                args.workload_selectors
            },
            if args.workload_entries.is_empty() {
                file.workload_entries
            } else {
                args.workload_entries
            },
        )?,
    })
}

fn workload_api(
    socket: Option<PathBuf>,
    selectors: Vec<String>,
    entries: Vec<String>,
) -> Result<Option<AgentWorkloadApi>, String> {
    let Some(socket) = socket else {
        return match selectors.is_empty() && entries.is_empty() {
            true => Ok(None),
            false => Err("--workload-selector and --workload-entry need --workload-api".to_owned()),
        };
    };
    if selectors.is_empty() {
        return Err("--workload-api needs at least one --workload-selector".to_owned());
    }
    let selectors = selectors
        .iter()
        .map(|s| s.parse::<Selector>())
        .collect::<Result<_, _>>()?;
    let entries = entries
        .iter()
        .map(|entry| {
            let (spiffe_id, selectors) = entry.split_once('=').ok_or_else(|| {
                format!("--workload-entry {entry:?}: expected <spiffe id>=<selector>[,...]")
            })?;
            let selectors = selectors
                .split(',')
                .map(|s| s.trim().parse::<Selector>())
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RegistrationEntry {
                spiffe_id: spiffe_id.to_owned(),
                selectors,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Some(AgentWorkloadApi {
        socket,
        selectors,
        entries,
    }))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
