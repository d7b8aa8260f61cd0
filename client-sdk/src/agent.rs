//! The sidecar agent (`mintgate-agent`): enrolls, writes `cert.pem`, `key.pem` (0600) and
//! `bundle.pem` atomically, renews inside the window, runs a hook or signals a process after
//! each rotation, follows the revocation feed, and serves a health endpoint. An enrollment or
//! renewal held for approvers is waited through (same request id and key) and reported as held
//! on the health endpoint. If its own certificate is revoked it deletes the key material, says
//! why, and stops (fail closed); it never re-enrolls a revoked identity on its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{
    Client, Clock, Credential, CredentialManager, CredentialState, Endpoint, Error, RenewalPolicy,
    RevocationSet, RevocationWatcher, TlsMaterial, WatcherConfig, atomic_write,
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
///
/// `/healthz` is served from the start: while the enrollment is held for approvers it answers
/// 503 `held: <reason> (hold <id>, <n>/<quorum> approvals)`, and the agent keeps asking with the
/// same request id and key until the hold is released (then it writes its files) or refused
/// (then it returns [`AgentError::Enroll`] with `HOLD_DENIED` or `HOLD_EXPIRED`).
pub async fn run(
    config: AgentConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<AgentExit, AgentError> {
    std::fs::create_dir_all(&config.out_dir).map_err(io(&config.out_dir))?;
    // The node identity: it attests the workload, and follows the revocation feed (the
    // workload certificate it guards may be revoked, and Mintgate cuts that certificate's
    // connections the moment it is).
    let node = TlsMaterial {
        ca_pem: config.ca_pem.clone(),
        cert_pem: config.node_cert_pem.clone(),
        key_pem: config.node_key_pem.clone(),
    };
    let bootstrap =
        Client::connect(&config.endpoint.url, &config.endpoint.server_name, &node).await?;
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
    let (state, state_rx) = watch::channel(CredentialState::Enrolling);
    let (installed, installed_rx) = watch::channel(None::<Credential>);
    let _health = match config.health_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Io {
                    path: PathBuf::from(addr.to_string()),
                    source,
                })?;
            Some(AbortOnDrop(tokio::spawn(serve_health(
                listener,
                Health {
                    set: set.clone(),
                    state: state_rx,
                    installed: installed_rx,
                    clock: clock.clone(),
                    max_staleness: config.max_staleness,
                },
            ))))
        }
        None => None,
    };

    tokio::pin!(shutdown);
    let enroll = CredentialManager::enroll_reporting(
        &bootstrap,
        config.endpoint.clone(),
        &config.spiffe_id,
        config.join_token.clone(),
        config.policy.clone(),
        clock.clone(),
        state,
    );
    let manager = tokio::select! {
        () = &mut shutdown => return Ok(AgentExit::Shutdown),
        manager = enroll => manager?,
    };
    let mut updates = manager.subscribe();
    let mut current = manager.current();
    install(&config, &current)?;
    installed.send_replace(Some(current.clone()));
    tracing::info!(serial = %current.serial, spiffe_id = %current.spiffe_id, "enrolled");

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
                installed.send_replace(Some(current.clone()));
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

/// Stops a background task when the agent returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

/// What `/healthz` looks at.
struct Health {
    set: Arc<RevocationSet>,
    state: watch::Receiver<CredentialState>,
    /// The credential whose files are in place, once there is one.
    installed: watch::Receiver<Option<Credential>>,
    clock: Arc<dyn Clock>,
    max_staleness: Duration,
}

impl Health {
    /// `Ok(body)` for 200, `Err(reason)` for 503.
    fn check(&self) -> Result<String, String> {
        let state = self.state.borrow().clone();
        let Some(current) = self.installed.borrow().clone() else {
            return Err(match state {
                CredentialState::Held(hold) => hold.summary(),
                CredentialState::Refused(e) => format!("enrollment refused: {e}"),
                CredentialState::Enrolling
                | CredentialState::Current
                | CredentialState::Expired => "enrolling".to_owned(),
            });
        };
        if self.set.is_revoked(&current.serial) {
            Err("certificate revoked".to_owned())
        } else if self.clock.now() >= current.not_after {
            Err("certificate expired".to_owned())
        } else if self
            .set
            .staleness()
            .is_none_or(|age| age > self.max_staleness)
        {
            Err("revocation feed stale".to_owned())
        } else {
            // The certificate in place is good; say what its renewal is waiting for.
            Ok(match state {
                CredentialState::Held(hold) => format!("ok; renewal {}", hold.summary()),
                CredentialState::Refused(e) => format!("ok; renewal refused: {e}"),
                CredentialState::Enrolling
                | CredentialState::Current
                | CredentialState::Expired => "ok".to_owned(),
            })
        }
    }
}

/// `GET /healthz`: 200 while the certificate is valid, not revoked and the feed is fresh (the
/// body says if a renewal is held or refused); 503 with the reason otherwise, including
/// `held: <reason> ...` while the enrollment waits for approvers.
async fn serve_health(listener: TcpListener, health: Health) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let verdict = health.check();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).await;
            let (status, body) = match verdict {
                Ok(ok) => ("200 OK", format!("{ok}\n")),
                Err(p) => ("503 Service Unavailable", format!("{p}\n")),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}
