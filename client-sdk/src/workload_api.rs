//! The SPIFFE Workload API (DESIGN §16) on a Unix socket: any SPIFFE client library gets its
//! X.509 SVID and the trust bundle from the agent without knowing Mintgate.
//!
//! - Every call must carry the metadata `workload.spiffe.io: true` (the spec's guard against
//!   a workload being tricked into calling through a proxy); without it: INVALID_ARGUMENT.
//! - The caller is its peer credentials (uid, gid, pid of the connecting process, from the
//!   kernel: `SO_PEERCRED`), matched against the agent's [`RegistrationEntry`]s; every selector
//!   of an entry must match (`unix:uid:N`, `unix:gid:N`, `unix:path:/bin/x`, the executable of
//!   the process). A caller no entry matches gets PERMISSION_DENIED.
//! - `FetchX509SVID` streams the caller's SVIDs (certificate chain, PKCS#8 key, bundle, all
//!   DER) at once and on every rotation; when an identity's credential is withdrawn (revoked)
//!   the stream ends with PERMISSION_DENIED. `FetchX509Bundles` streams the trust bundle on every
//!   change. The JWT methods answer UNIMPLEMENTED.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use mintgate_proto::spiffe::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use mintgate_proto::spiffe::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use rustls::pki_types::pem::PemObject as _;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::UdsConnectInfo;

use self::authority::Relayed;
use self::identities::Enroller;

mod authority;
mod identities;
use tonic::{Request, Response, Status};

/// The metadata every Workload API call must carry.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// What a caller's process must be for an entry to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `unix:uid:<n>`
    Uid(u32),
    /// `unix:gid:<n>`
    Gid(u32),
    /// `unix:path:<absolute path>`: the process's executable, when it calls. A process that
    /// connects, hands the socket to a child and then execs this path passes it: pair it with
    /// the [`Selector::Uid`] of a user only this workload runs as.
    Path(PathBuf),
}

impl std::str::FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: a selector is unix:uid:<n>, unix:gid:<n> or unix:path:<path>");
        let rest = s.strip_prefix("unix:").ok_or_else(bad)?;
        let (kind, value) = rest.split_once(':').ok_or_else(bad)?;
        match kind {
            "uid" => value.parse().map(Self::Uid).map_err(|_| bad()),
            "gid" => value.parse().map(Self::Gid).map_err(|_| bad()),
            "path" if Path::new(value).is_absolute() => Ok(Self::Path(value.into())),
            _ => Err(bad()),
        }
    }
}

/// The process on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
    /// Its process id, when the kernel tells.
    pub pid: Option<i32>,
}

impl Selector {
    fn matches(&self, peer: &Peer) -> bool {
        match self {
            Self::Uid(uid) => peer.uid == *uid,
            Self::Gid(gid) => peer.gid == *gid,
            Self::Path(path) => peer
                .pid
                .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
                .is_some_and(|exe| exe == *path),
        }
    }
}

/// One identity the agent serves, and who may have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationEntry {
    /// The identity it gives.
    pub spiffe_id: String,
    /// All must match; an entry with none matches nobody.
    pub selectors: Vec<Selector>,
}

impl RegistrationEntry {
    fn matches(&self, peer: &Peer) -> bool {
        !self.selectors.is_empty() && self.selectors.iter().all(|s| s.matches(peer))
    }
}

/// An X.509 SVID as the Workload API hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svid {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The certificate, then the CAs that issued it (not the root), DER.
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8, DER.
    pub key_der: Vec<u8>,
}

/// The trust bundle: the trust domain's SPIFFE ID and its CA certificates, DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// `spiffe://<trust domain>`.
    pub trust_domain: String,
    /// The CA certificates, DER.
    pub certs_der: Vec<Vec<u8>>,
}

/// The identities served, each with its current SVID (`None` once withdrawn), and the bundle.
#[derive(Clone)]
pub struct WorkloadApi {
    entries: Arc<Vec<(RegistrationEntry, watch::Receiver<Option<Svid>>)>>,
    bundle: watch::Receiver<Option<Bundle>>,
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl WorkloadApi {
    /// Serves `entries`, each with its SVID as it changes, and `bundle`.
    pub fn new(
        entries: Vec<(RegistrationEntry, watch::Receiver<Option<Svid>>)>,
        bundle: watch::Receiver<Option<Bundle>>,
    ) -> Self {
        Self {
            entries: Arc::new(entries),
            bundle,
        }
    }

    /// A new Unix socket at `path` (mode 0666: any local process may ask; who it is decides
    /// what it gets), replacing a stale one.
    pub fn bind(path: &Path) -> Result<UnixListener, std::io::Error> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
        Ok(listener)
    }

    /// Serves on `listener` (see [`WorkloadApi::bind`]) until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: UnixListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(self))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener).map(|accepted| accepted.map(Relayed::new)),
                shutdown,
            )
            .await
    }

    /// The entries the caller of `request` is entitled to, after the header check.
    fn entitled<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Vec<watch::Receiver<Option<Svid>>>, Status> {
        let header = request.metadata().get(SECURITY_HEADER);
        if header.and_then(|v| v.to_str().ok()) != Some("true") {
            return Err(Status::invalid_argument(
                "security header missing from request (workload.spiffe.io: true)",
            ));
        }
        let peer = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| Peer {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            })
            .ok_or_else(|| Status::permission_denied("the caller's credentials are unknown"))?;
        let entitled: Vec<_> = self
            .entries
            .iter()
            .filter(|(entry, _)| entry.matches(&peer))
            .map(|(_, svid)| svid.clone())
            .collect();
        if entitled.is_empty() {
            tracing::info!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "no registration entry matches the caller");
            return Err(Status::permission_denied("no identity issued"));
        }
        Ok(entitled)
    }
}

/// The caller's SVIDs now; `None` while one has not been issued yet (the agent is still
/// enrolling); an error once one that was issued is withdrawn (revoked), which ends the stream.
fn svid_response(
    svids: &mut [watch::Receiver<Option<Svid>>],
    issued: &mut [bool],
    bundle: Option<&Bundle>,
) -> Result<Option<X509svidResponse>, Status> {
    let bundle_der: Vec<u8> = bundle.map(|b| b.certs_der.concat()).unwrap_or_default();
    let mut out = Vec::with_capacity(svids.len());
    for (rx, issued) in svids.iter_mut().zip(issued.iter_mut()) {
        match rx.borrow_and_update().clone() {
            Some(svid) => {
                *issued = true;
                out.push(X509svid {
                    spiffe_id: svid.spiffe_id,
                    x509_svid: svid.chain_der.concat(),
                    x509_svid_key: svid.key_der,
                    bundle: bundle_der.clone(),
                    hint: String::new(),
                });
            }
            None if *issued => {
                return Err(Status::permission_denied(
                    "the identity was withdrawn (revoked)",
                ));
            }
            None => return Ok(None),
        }
    }
    Ok(Some(X509svidResponse {
        svids: out,
        ..Default::default()
    }))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Stream_<X509svidResponse>;
    type FetchX509BundlesStream = Stream_<X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream_<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let mut svids = self.entitled(&request)?;
        let mut issued = vec![false; svids.len()];
        let mut bundle = self.bundle.clone();
        let stream = async_stream(move |tx| async move {
            loop {
                let answer =
                    svid_response(&mut svids, &mut issued, bundle.borrow_and_update().as_ref());
                let end = answer.is_err();
                if let Some(answer) = answer.transpose()
                    && (tx.send(answer).await.is_err() || end)
                {
                    return;
                }
                // The next rotation of any of them, or a new bundle.
                let changed = futures_util::future::select_all(
                    svids.iter_mut().map(|rx| Box::pin(rx.changed())),
                );
                tokio::select! {
                    () = tx.closed() => return,
                    (result, _, _) = changed => if result.is_err() { return },
                    result = bundle.changed() => if result.is_err() { return },
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.entitled(&request)?;
        let mut bundle = self.bundle.clone();
        let stream = async_stream(move |tx| async move {
            loop {
                let current = bundle.borrow_and_update().clone();
                if let Some(b) = current {
                    let answer = X509BundlesResponse {
                        crl: Vec::new(),
                        bundles: [(b.trust_domain, b.certs_der.concat())].into(),
                    };
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = tx.closed() => return,
                    changed = bundle.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn fetch_jwtsvid(
        &self,
        _request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Err(Status::unimplemented("JWT-SVIDs are not issued"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("JWT-SVIDs are not issued"))
    }

    async fn validate_jwtsvid(
        &self,
        _request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("JWT-SVIDs are not issued"))
    }
}

/// The agent's Workload API: where it listens, who gets the agent's identity, and the other
/// identities it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentWorkloadApi {
    /// The Unix socket, e.g. `/run/mintgate/agent.sock`.
    pub socket: PathBuf,
    /// The processes that get the agent's identity (all must match; at least one).
    pub selectors: Vec<Selector>,
    /// Other identities, each enrolled (its own key) and renewed by the agent for the processes
    /// its selectors match.
    pub entries: Vec<RegistrationEntry>,
}

/// If the agent is configured to, serves its credential (as it is installed, rotated and
/// withdrawn) for the processes its selectors match, each other entry's identity (see
/// [`Enroller`]) and the bundle it follows, on its Workload API socket. The returned task
/// serves until aborted.
pub(crate) fn serve_agent(
    agent: &crate::agent::AgentConfig,
    bootstrap: &crate::Client,
    clock: &Arc<dyn crate::Clock>,
    revocations: &Arc<crate::RevocationSet>,
    (installed, followed): (
        &watch::Sender<Option<crate::Credential>>,
        &crate::TrustBundleWatcher,
    ),
) -> Result<Option<tokio::task::JoinHandle<()>>, crate::agent::AgentError> {
    let Some(config) = &agent.workload_api else {
        return Ok(None);
    };
    let (mut installed, mut followed) = (installed.subscribe(), followed.subscribe());
    let spiffe_id = agent.spiffe_id.as_str();
    let enroller = Enroller {
        bootstrap: bootstrap.clone(),
        endpoint: agent.endpoint.clone(),
        policy: agent.policy.clone(),
        clock: clock.clone(),
        revocations: revocations.clone(),
    };
    let listener =
        WorkloadApi::bind(&config.socket).map_err(|source| crate::agent::AgentError::Io {
            path: config.socket.clone(),
            source,
        })?;
    let trust_domain = spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .map(|td| format!("spiffe://{td}"))
        .unwrap_or_default();
    let to_svid = identities::svid;
    let (svid_tx, svid_rx) = watch::channel(installed.borrow_and_update().as_ref().map(to_svid));
    let (bundle_tx, bundle_rx) = watch::channel(None);
    let entry = RegistrationEntry {
        spiffe_id: spiffe_id.to_owned(),
        selectors: config.selectors.clone(),
    };
    let mut entries = vec![(entry, svid_rx)];
    for other in &config.entries {
        entries.push((other.clone(), enroller.follow(other.spiffe_id.clone())));
    }
    let api = WorkloadApi::new(entries, bundle_rx);
    Ok(Some(tokio::spawn(async move {
        let follow = async {
            loop {
                // The followed bundle once there is one, the issuance answer's until then.
                let pem = followed
                    .borrow_and_update()
                    .as_ref()
                    .map(|b| b.bundle_pem.clone())
                    .or_else(|| {
                        installed
                            .borrow()
                            .as_ref()
                            .map(|c| c.trust_bundle_pem.clone())
                    });
                bundle_tx.send_replace(pem.map(|pem| Bundle {
                    trust_domain: trust_domain.clone(),
                    certs_der: pem_certs(&pem),
                }));
                tokio::select! {
                    changed = installed.changed() => {
                        if changed.is_err() { return; }
                        svid_tx.send_replace(installed.borrow_and_update().as_ref().map(to_svid));
                    }
                    changed = followed.changed() => if changed.is_err() { return },
                }
            }
        };
        tokio::select! {
            () = follow => {}
            served = api.serve(listener, std::future::pending()) => {
                if let Err(e) = served {
                    tracing::error!(error = %e, "the Workload API stopped");
                }
            }
        }
    })))
}

/// A channel to a Workload API on the Unix socket `path` (for Rust callers and tests; every
/// call must still carry [`SECURITY_HEADER`]).
pub async fn connect(path: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(UnixConnector(path.to_owned()))
        .await
}

/// Connects every request to one Unix socket.
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tonic::codegen::Service<tonic::transport::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::transport::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(hyper_util::rt::TokioIo::new)
        })
    }
}

fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// A response stream fed by `produce` through a small channel (a slow reader holds it back).
fn async_stream<T, F, Fut>(produce: F) -> Stream_<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests;
