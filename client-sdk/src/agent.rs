//! The sidecar agent (`mintgate-agent`): enrolls, writes `cert.pem`, `key.pem` (0600) and
//! `bundle.pem` atomically, renews inside the window, runs a hook or signals a process after
//! each rotation, follows the revocation feed and the trust bundle, and serves a health
//! endpoint. An enrollment or renewal held for approvers is waited through (same request id and
//! key) and reported as held on the health endpoint. If its own certificate is revoked it
//! deletes the key material, says why, and stops (fail closed); it never re-enrolls a revoked
//! identity on its own.
//!
//! `bundle.pem` follows `WatchTrustBundle` (through the node identity, like the revocation
//! feed): every change of the bundle (a CA prepared for rotation, so workloads trust it before
//! it signs anything; a CA retired or revoked, so it leaves their roots) replaces the file
//! atomically and runs the hook / signal as a rotation does. Until the first bundle arrives,
//! and if the server never sends one, the bundle of the issuance answer is written.
//!
//! When the CA that signed its certificate is revoked (`RevokeIssuer`: the identity is not at
//! fault, the CA is), the agent removes the key material as for a revocation, then enrolls again
//! through the node certificate, the way it obtained its first certificate; the server issues
//! from the successor CA. If that enrollment is refused (a one-time join token is not sent
//! again, so an identity that needs one cannot come back this way) it stops as
//! [`AgentExit::IssuerRevoked`].
//!
//! Where policy asks for the workload's Kubernetes service-account token, the agent reads it
//! from [`AgentConfig::service_account_token_file`] (a projected volume) for each enrollment,
//! the first and any after its issuer's revocation: the kubelet replaces the token before it
//! expires, so a token read once would be stale by then.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mintgate_proto::v1;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::health::{Health, serve_health};
use crate::cert_ids::CertificateIds;
use crate::{
    Attestation, BundleFile, Client, Clock, Connect, Credential, CredentialManager,
    CredentialState, Endpoint, Error, RenewalPolicy, RevocationSet, RevocationWatcher, TlsMaterial,
    TrustBundleConfig, TrustBundleWatcher, WatcherConfig, atomic_write,
};

mod health;

/// Everything the agent needs. `Debug` leaves out the node key and the join token.
#[derive(Clone)]
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
    /// A file holding the workload's Kubernetes projected service-account token, where policy
    /// asks for one; read again for each enrollment.
    pub service_account_token_file: Option<PathBuf>,
    /// Where `cert.pem`, `key.pem` and `bundle.pem` are written.
    pub out_dir: PathBuf,
    /// Lifetime and renewal window.
    pub policy: RenewalPolicy,
    /// Run after each rotation and each change of the trust bundle (program and arguments).
    pub hook: Option<Vec<String>>,
    /// Send SIGHUP to this process after each rotation and each change of the trust bundle.
    pub signal_pid: Option<u32>,
    /// Serve `GET /healthz` here.
    pub health_addr: Option<SocketAddr>,
    /// The feed counts as stale (unhealthy) after this long without news.
    pub max_staleness: Duration,
    /// Serve the SPIFFE Workload API on a Unix socket (see [`crate::workload_api`]).
    pub workload_api: Option<crate::workload_api::AgentWorkloadApi>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("endpoint", &self.endpoint)
            .field("spiffe_id", &self.spiffe_id)
            .field("join_token", &self.join_token.is_some())
            .field(
                "service_account_token_file",
                &self.service_account_token_file,
            )
            .field("out_dir", &self.out_dir)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
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
    /// The CA that signed its certificate was revoked and enrolling again was refused: the key
    /// material is gone.
    IssuerRevoked {
        /// The certificate's serial.
        serial: String,
        /// The revoked CA's key id (the certificate's authority key identifier, hex).
        issuer_key_id: String,
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

/// What an enrollment shows: `join_token` (the first enrollment's only: it is spent then), and
/// the service-account token as its file holds it now.
fn attestation(
    config: &AgentConfig,
    join_token: Option<String>,
) -> Result<Attestation, AgentError> {
    let service_account_token = match &config.service_account_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path).map_err(io(path))?;
            let token = token.trim();
            if token.is_empty() {
                return Err(io(path)(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "holds no service-account token",
                )));
            }
            Some(token.to_owned())
        }
        None => None,
    };
    Ok(Attestation {
        join_token,
        service_account_token,
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs the agent until `shutdown` resolves, its certificate is revoked, or it expires (or its
/// issuing CA is revoked and enrolling again is refused).
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
    let connect: Connect = Arc::new(move || {
        let (endpoint, tls) = (endpoint.clone(), node.clone());
        Box::pin(async move { Client::connect(&endpoint.url, &endpoint.server_name, &tls).await })
    });
    let watcher = RevocationWatcher::spawn(
        connect.clone(),
        WatcherConfig {
            state_file: Some(config.out_dir.join("revocations.json")),
            ..WatcherConfig::default()
        },
    )
    .map_err(io(&config.out_dir))?;
    let set = watcher.set();
    // The agent writes bundle.pem itself (one writer, in the loop below), so the follower keeps
    // the bundle on its channel only.
    let bundles = TrustBundleWatcher::spawn(connect, TrustBundleConfig::default());
    let mut bundle_rx = bundles.subscribe();
    let mut bundle_open = true;
    let mut files = Files::new(&config);
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

    let workload_api = (&installed, &bundles);
    let served = crate::workload_api::serve_agent(&config, &bootstrap, &clock, &set, workload_api);
    let _workload_api = served?.map(AbortOnDrop);
    tokio::pin!(shutdown);
    let enroll = CredentialManager::enroll_reporting(
        &bootstrap,
        config.endpoint.clone(),
        &config.spiffe_id,
        attestation(&config, config.join_token.clone())?,
        config.policy.clone(),
        clock.clone(),
        state.clone(),
    );
    let mut manager = tokio::select! {
        () = &mut shutdown => return Ok(AgentExit::Shutdown),
        manager = enroll => manager?,
    };
    let mut updates = manager.subscribe();
    let mut current = manager.current();
    files.install(&current, bundle_rx.borrow_and_update().as_ref())?;
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
                files.install(&current, bundle_rx.borrow_and_update().as_ref())?;
                installed.send_replace(Some(current.clone()));
                tracing::info!(serial = %current.serial, not_after = %current.not_after, "certificate rotated");
            }
            changed = bundle_rx.changed(), if bundle_open => {
                if changed.is_err() {
                    // The follower is gone (it never stops on its own); keep the last bundle.
                    tracing::error!("trust bundle follower stopped; bundle.pem is no longer updated");
                    bundle_open = false;
                } else if let Some(bundle) = bundle_rx.borrow_and_update().clone() {
                    files.bundle_changed(&bundle)?;
                }
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
        if let Some(issuer_key_id) = revoked_issuer(&set, &current) {
            // The CA is compromised, not this identity: replace the certificate the way the
            // first one was obtained. Stop renewing the old one first (no server accepts it).
            drop(manager);
            remove_key_material(&config.out_dir);
            installed.send_replace(None);
            tracing::warn!(
                serial = %current.serial,
                %issuer_key_id,
                "the CA that signed this agent's certificate was revoked: key material removed; enrolling again through the node certificate"
            );
            // A one-time join token was spent on the first enrollment: never replay it.
            let attestation = match attestation(&config, None) {
                Ok(attestation) => attestation,
                Err(e) => {
                    tracing::error!(serial = %current.serial, %issuer_key_id, error = %e, "cannot enroll again after the issuer's revocation; stopping");
                    return Ok(AgentExit::IssuerRevoked {
                        serial: current.serial,
                        issuer_key_id,
                    });
                }
            };
            let enroll = CredentialManager::enroll_reporting(
                &bootstrap,
                config.endpoint.clone(),
                &config.spiffe_id,
                attestation,
                config.policy.clone(),
                clock.clone(),
                state.clone(),
            );
            manager = tokio::select! {
                () = &mut shutdown => return Ok(AgentExit::Shutdown),
                enrolled = enroll => match enrolled {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(serial = %current.serial, %issuer_key_id, error = %e, "enrolling again after the issuer's revocation failed; stopping");
                        return Ok(AgentExit::IssuerRevoked { serial: current.serial, issuer_key_id });
                    }
                },
            };
            let replaced = std::mem::replace(&mut current, manager.current());
            updates = manager.subscribe();
            if revoked_issuer(&set, &current).is_some() || set.is_revoked(&current.serial) {
                // Issued by a revoked CA again: no point asking a third time.
                tracing::error!(serial = %current.serial, %issuer_key_id, "the new certificate is revoked too; stopping");
                return Ok(AgentExit::IssuerRevoked {
                    serial: replaced.serial,
                    issuer_key_id,
                });
            }
            files.install(&current, bundle_rx.borrow_and_update().as_ref())?;
            installed.send_replace(Some(current.clone()));
            tracing::info!(serial = %current.serial, revoked = %replaced.serial, not_after = %current.not_after, "enrolled again under a new CA");
        }
    }
}

/// The key id of the CA that signed `credential`'s certificate, if that CA is revoked.
fn revoked_issuer(set: &RevocationSet, credential: &Credential) -> Option<String> {
    let leaf = CertificateDer::pem_slice_iter(credential.chain_pem.as_bytes())
        .next()?
        .ok()?;
    CertificateIds::parse(&leaf)?
        .authority_key_id
        .filter(|key_id| set.is_issuer_revoked(key_id))
}

/// Stops a background task when the agent returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The agent's files and what is told after they change.
struct Files<'a> {
    config: &'a AgentConfig,
    bundle: BundleFile,
}

impl<'a> Files<'a> {
    fn new(config: &'a AgentConfig) -> Self {
        Self {
            config,
            bundle: BundleFile::new(config.out_dir.join("bundle.pem")),
        }
    }

    /// Writes the three files (each atomically; key first, so a reader that sees the new
    /// certificate finds its key), then runs the hook and the signal. The bundle is the one
    /// followed from the server if one has arrived, else the issuance answer's.
    fn install(
        &mut self,
        credential: &Credential,
        followed: Option<&v1::TrustBundle>,
    ) -> Result<(), AgentError> {
        let dir = &self.config.out_dir;
        for (name, contents, mode) in [
            ("key.pem", &credential.key_pem, 0o600),
            ("cert.pem", &credential.chain_pem, 0o644),
        ] {
            let path = dir.join(name);
            atomic_write(&path, contents.as_bytes(), mode).map_err(io(&path))?;
        }
        let bundle = followed.map_or(&credential.trust_bundle_pem, |b| &b.bundle_pem);
        self.bundle
            .write_pem(bundle)
            .map_err(io(self.bundle.path()))?;
        self.notify();
        Ok(())
    }

    /// A new trust bundle from the server: replaces bundle.pem, then runs the hook and the
    /// signal, unless the file already holds exactly that bundle.
    fn bundle_changed(&mut self, bundle: &v1::TrustBundle) -> Result<(), AgentError> {
        let written = self.bundle.apply(bundle).map_err(io(self.bundle.path()))?;
        if written {
            tracing::info!(version = %bundle.version, "trust bundle changed; bundle.pem replaced");
            self.notify();
        }
        Ok(())
    }

    fn notify(&self) {
        if let Some(hook) = self.config.hook.as_ref().and_then(|h| h.split_first()) {
            run_quietly(hook.0, hook.1);
        }
        if let Some(pid) = self.config.signal_pid {
            run_quietly("kill", &["-HUP".to_owned(), pid.to_string()]);
        }
    }
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

#[cfg(test)]
mod tests {
    use mintgate_proto::v1::watch_revocations_response::Message;
    use time::OffsetDateTime;

    use super::*;
    use crate::test_pki::{CA_KEY_ID, TestCa};

    fn config(out_dir: &Path, hook_log: &Path) -> AgentConfig {
        AgentConfig {
            endpoint: Endpoint {
                url: "https://127.0.0.1:1".to_owned(),
                server_name: "localhost".to_owned(),
            },
            ca_pem: String::new(),
            node_cert_pem: String::new(),
            node_key_pem: String::new(),
            spiffe_id: "spiffe://example/web".to_owned(),
            join_token: None,
            service_account_token_file: None,
            out_dir: out_dir.to_owned(),
            policy: RenewalPolicy::default(),
            hook: Some(vec![
                "sh".to_owned(),
                "-c".to_owned(),
                format!("echo run >> {}", hook_log.display()),
            ]),
            signal_pid: None,
            health_addr: None,
            max_staleness: Duration::from_secs(60),
            workload_api: None,
        }
    }

    fn credential(ca: &TestCa, serial: &[u8]) -> Credential {
        let now = OffsetDateTime::now_utc();
        Credential {
            chain_pem: ca.chain_pem(serial),
            key_pem: "key".to_owned(),
            trust_bundle_pem: ca.pem(),
            serial: hex::encode(serial),
            spiffe_id: "spiffe://example/web".to_owned(),
            not_before: now,
            not_after: now + time::Duration::hours(1),
            renew_after: None,
        }
    }

    fn hook_runs(log: &Path) -> usize {
        std::fs::read_to_string(log).map_or(0, |s| s.lines().count())
    }

    #[cfg(unix)]
    #[test]
    fn debug_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig {
            node_key_pem: "node-key-secret".to_owned(),
            join_token: Some("jt-secret".to_owned()),
            ..config(dir.path(), &dir.path().join("hook.log"))
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("spiffe://example/web"), "{shown}");
    }

    #[test]
    fn bundle_pem_follows_the_server_and_the_hook_runs_only_on_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("hook.log");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let config = config(&out, &log);
        let mut files = Files::new(&config);
        let (ca, successor) = (TestCa::new(&CA_KEY_ID), TestCa::new(&[0x11; 20]));
        let bundle_pem = || std::fs::read_to_string(out.join("bundle.pem")).unwrap();

        // Enrolled before the first bundle arrived: the answer's bundle.
        files.install(&credential(&ca, &[1]), None).unwrap();
        assert_eq!((bundle_pem(), hook_runs(&log)), (ca.pem(), 1));
        // The server's first bundle is the same: nothing rewritten, the hook not run.
        let same = v1::TrustBundle {
            bundle_pem: ca.pem(),
            version: "v1".to_owned(),
            authorities: Vec::new(),
        };
        files.bundle_changed(&same).unwrap();
        assert_eq!(hook_runs(&log), 1);
        // A successor is prepared: workloads get it before it signs anything.
        let prepared = v1::TrustBundle {
            bundle_pem: format!("{}{}", ca.pem(), successor.pem()),
            version: "v2".to_owned(),
            authorities: Vec::new(),
        };
        files.bundle_changed(&prepared).unwrap();
        assert_eq!(
            (bundle_pem(), hook_runs(&log)),
            (prepared.bundle_pem.clone(), 2)
        );
        // A rotation writes the followed bundle, not the answer's older one.
        files
            .install(&credential(&ca, &[2]), Some(&prepared))
            .unwrap();
        assert_eq!(
            (bundle_pem(), hook_runs(&log)),
            (prepared.bundle_pem.clone(), 3)
        );
        // An empty bundle is refused and bundle.pem keeps its roots.
        let empty = v1::TrustBundle::default();
        assert!(files.bundle_changed(&empty).is_err());
        assert_eq!((bundle_pem(), hook_runs(&log)), (prepared.bundle_pem, 3));
    }

    #[test]
    fn the_agent_sees_its_certificate_revoked_through_its_issuer() {
        let (ca, other) = (TestCa::new(&CA_KEY_ID), TestCa::new(&[0x22; 20]));
        let mine = credential(&ca, &[0x0a]);
        let theirs = credential(&other, &[0x0a]);
        let set = RevocationSet::empty();
        assert_eq!(revoked_issuer(&set, &mine), None);
        set.apply_at(
            Message::Event(v1::RevocationEvent {
                seq: 1,
                serial: "7f01".to_owned(),
                issuer_key_id: hex::encode(CA_KEY_ID),
                issuer: true,
                not_after: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..v1::RevocationEvent::default()
            }),
            0,
        );
        assert_eq!(revoked_issuer(&set, &mine), Some(hex::encode(CA_KEY_ID)));
        assert_eq!(revoked_issuer(&set, &theirs), None);
        // Not a revocation of its serial: the agent re-enrolls rather than stopping.
        assert!(!set.is_revoked(&mine.serial));
    }
}
