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
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::UdsConnectInfo;
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
    /// `unix:path:<absolute path>`: the process's executable.
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
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
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

/// The caller's SVIDs now, or why the stream ends.
fn svid_response(
    svids: &mut [watch::Receiver<Option<Svid>>],
    bundle: Option<&Bundle>,
) -> Result<X509svidResponse, Status> {
    let bundle_der: Vec<u8> = bundle.map(|b| b.certs_der.concat()).unwrap_or_default();
    let svids = svids
        .iter_mut()
        .map(|rx| {
            let current = rx.borrow_and_update().clone();
            current
                .map(|svid| X509svid {
                    spiffe_id: svid.spiffe_id,
                    x509_svid: svid.chain_der.concat(),
                    x509_svid_key: svid.key_der,
                    bundle: bundle_der.clone(),
                    hint: String::new(),
                })
                .ok_or_else(|| Status::permission_denied("the identity was withdrawn (revoked)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(X509svidResponse {
        svids,
        ..Default::default()
    })
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
        let mut bundle = self.bundle.clone();
        let stream = async_stream(move |tx| async move {
            loop {
                let answer = svid_response(&mut svids, bundle.borrow_and_update().as_ref());
                let end = answer.is_err();
                if tx.send(answer).await.is_err() || end {
                    return;
                }
                // The next rotation of any of them, or a new bundle.
                let changed = futures_util::future::select_all(
                    svids.iter_mut().map(|rx| Box::pin(rx.changed())),
                );
                tokio::select! {
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
                if bundle.changed().await.is_err() {
                    return;
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
