//! The sidecar agent (`mintgate-agent`): enrolls, writes `cert.pem`, `key.pem` (0600) and
//! `bundle.pem` atomically, renews inside the window, runs a hook or signals a process after
//! each rotation, follows the revocation feed, and serves a health endpoint. If its own
//! certificate is revoked it deletes the key material, says why, and stops (fail closed); it
//! never re-enrolls a revoked identity on its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{
    Client, Clock, Credential, CredentialManager, Endpoint, Error, RenewalPolicy, RevocationSet,
    RevocationWatcher, TlsMaterial, WatcherConfig, atomic_write,
};

/// Everything the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where Mintgate is.
    pub endpoint: Endpoint,
    /// Mintgate's CA bundle, PEM.
    pub ca_pem: String,
    /// The node (bootstrap) certificate and key, PEM.
    pub node_cert_pem: String,
    /// The node (bootstrap) key, PEM.
    pub node_key_pem: String,
    /// The SPIFFE ID to obtain.
    pub spiffe_id: String,
    /// A one-time join token, where policy asks for one.
    pub join_token: Option<String>,
    /// Where `cert.pem`, `key.pem` and `bundle.pem` are written.
    pub out_dir: PathBuf,
    /// Lifetime and renewal window.
    pub policy: RenewalPolicy,
    /// Run after each rotation (program and arguments).
    pub hook: Option<Vec<String>>,
    /// Send SIGHUP to this process after each rotation.
    pub signal_pid: Option<u32>,
    /// Serve `GET /healthz` here.
    pub health_addr: Option<SocketAddr>,
    /// The feed counts as stale (unhealthy) after this long without news.
    pub max_staleness: Duration,
}

/// Why the agent stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentExit {
    /// Asked to stop.
    Shutdown,
    /// Its certificate was revoked: the key material is gone.
    Revoked {
        /// The revoked certificate's serial.
        serial: String,
    },
    /// The certificate expired and could not be renewed; the key material is gone.
    Expired {
        /// The expired certificate's serial.
        serial: String,
    },
}

/// What can stop the agent before it serves.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("enrollment failed: {0}")]
    /// The first certificate could not be obtained.
    Enroll(#[from] Error),
    #[error("{path}: {source}")]
    /// A file or socket could not be used.
    Io {
        /// The path (or address) concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs the agent until `shutdown` resolves, its certificate is revoked, or it expires.
pub async fn run(
    config: AgentConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<AgentExit, AgentError> {
    std::fs::create_dir_all(&config.out_dir).map_err(io(&config.out_dir))?;
    let bootstrap = Client::connect(
        &config.endpoint.url,
        &config.endpoint.server_name,
        &TlsMaterial {
            ca_pem: config.ca_pem.clone(),
            cert_pem: config.node_cert_pem.clone(),
            key_pem: config.node_key_pem.clone(),
        },
    )
    .await?;
    let manager = CredentialManager::enroll(
        &bootstrap,
        config.endpoint.clone(),
        &config.spiffe_id,
        config.join_token.clone(),
        config.policy.clone(),
        clock.clone(),
    )
    .await?;
    let mut updates = manager.subscribe();
    let mut current = manager.current();
    install(&config, &current)?;
    tracing::info!(serial = %current.serial, spiffe_id = %current.spiffe_id, "enrolled");

    // The feed is followed with the node identity: the workload certificate it guards may be
    // revoked, and Mintgate cuts that certificate's connections the moment it is.
    let node = TlsMaterial {
        ca_pem: config.ca_pem.clone(),
        cert_pem: config.node_cert_pem.clone(),
        key_pem: config.node_key_pem.clone(),
    };
    let endpoint = config.endpoint.clone();
    let watcher = RevocationWatcher::spawn(
        Arc::new(move || {
            let (endpoint, tls) = (endpoint.clone(), node.clone());
            Box::pin(
                async move { Client::connect(&endpoint.url, &endpoint.server_name, &tls).await },
            )
        }),
        WatcherConfig {
            state_file: Some(config.out_dir.join("revocations.json")),
            ..WatcherConfig::default()
        },
    )
    .map_err(io(&config.out_dir))?;
    let set = watcher.set();
    if let Some(addr) = config.health_addr {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Io {
                path: PathBuf::from(addr.to_string()),
                source,
            })?;
        tokio::spawn(serve_health(
            listener,
            set.clone(),
            updates.clone(),
            clock.clone(),
            config.max_staleness,
        ));
    }

    tokio::pin!(shutdown);
    loop {
        let next_seq = set.cursor() + 1;
        tokio::select! {
            () = &mut shutdown => return Ok(AgentExit::Shutdown),
            changed = updates.changed() => {
                if changed.is_err() {
                    // The manager gave up: the certificate expired unrenewed.
                    remove_key_material(&config.out_dir);
                    tracing::error!(serial = %current.serial, "certificate expired without renewal; key material removed");
                    return Ok(AgentExit::Expired { serial: current.serial });
                }
                current = updates.borrow_and_update().clone();
                install(&config, &current)?;
                tracing::info!(serial = %current.serial, not_after = %current.not_after, "certificate rotated");
            }
            () = set.applied_through(next_seq) => {}
        }
        if set.is_revoked(&current.serial) {
            remove_key_material(&config.out_dir);
            tracing::error!(
                serial = %current.serial,
                spiffe_id = %current.spiffe_id,
                "this agent's certificate was revoked: key material removed, not re-enrolling"
            );
            return Ok(AgentExit::Revoked {
                serial: current.serial,
            });
        }
    }
}

/// Writes the three files (each atomically; key first, so a reader that sees the new
/// certificate finds its key), then runs the hook and the signal.
fn install(config: &AgentConfig, credential: &Credential) -> Result<(), AgentError> {
    let dir = &config.out_dir;
    for (name, contents, mode) in [
        ("key.pem", &credential.key_pem, 0o600),
        ("cert.pem", &credential.chain_pem, 0o644),
        ("bundle.pem", &credential.trust_bundle_pem, 0o644),
    ] {
        let path = dir.join(name);
        atomic_write(&path, contents.as_bytes(), mode).map_err(io(&path))?;
    }
    if let Some(hook) = config.hook.as_ref().and_then(|h| h.split_first()) {
        run_quietly(hook.0, hook.1);
    }
    if let Some(pid) = config.signal_pid {
        run_quietly("kill", &["-HUP".to_owned(), pid.to_string()]);
    }
    Ok(())
}

/// Runs a rotation hook; its failure is logged, never fatal (the files are already in place).
fn run_quietly(program: &str, args: &[String]) {
    match std::process::Command::new(program).args(args).status() {
        Ok(status) if status.success() => {}
        Ok(status) => tracing::warn!(program, %status, "rotation hook failed"),
        Err(e) => tracing::warn!(program, error = %e, "rotation hook could not run"),
    }
}

fn remove_key_material(dir: &Path) {
    for name in ["key.pem", "cert.pem"] {
        let path = dir.join(name);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(path = %path.display(), error = %e, "could not remove key material");
        }
    }
}

/// `GET /healthz`: 200 while the certificate is valid, not revoked and the feed is fresh;
/// 503 with the reason otherwise.
async fn serve_health(
    listener: TcpListener,
    set: Arc<RevocationSet>,
    credentials: tokio::sync::watch::Receiver<Credential>,
    clock: Arc<dyn Clock>,
    max_staleness: Duration,
) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let current = credentials.borrow().clone();
        let problem = if set.is_revoked(&current.serial) {
            Some("certificate revoked")
        } else if clock.now() >= current.not_after {
            Some("certificate expired")
        } else if set.staleness().is_none_or(|age| age > max_staleness) {
            Some("revocation feed stale")
        } else {
            None
        };
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).await;
            let (status, body) = match problem {
                None => ("200 OK", "ok\n".to_owned()),
                Some(p) => ("503 Service Unavailable", format!("{p}\n")),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}
