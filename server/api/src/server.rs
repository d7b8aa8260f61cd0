//! The mTLS listener and the tonic router. tonic's own TLS never re-checks a peer after the
//! handshake, so we run our own rustls acceptor and hand tonic already-authenticated
//! connections (`serve_with_incoming`), each carrying the [`Caller`] it proved to be.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mintgate_domain::model::Caller;
use mintgate_domain::ports::Clock;
use mintgate_domain::service::Mintgate;
use mintgate_domain::store::CertificateStore;
use mintgate_proto::fanout::revocation_server::RevocationServer;
use mintgate_proto::v1::admin_server::AdminServer;
use mintgate_proto::v1::provisioning_server::ProvisioningServer;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

use crate::admin::AdminService;
use crate::metrics::Metrics;
use crate::peer::PeerClassifier;
use crate::provisioning::ProvisioningService;
use crate::registry::{ConnectionGuard, RevocationHub};
use crate::revocation::RevocationService;
use crate::rpc_metrics::RpcMetricsLayer;
use crate::status::unauthenticated;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gRPC server is made of.
pub struct GrpcServer<S> {
    pub app: Arc<Mintgate<S>>,
    pub tls: Arc<ServerConfig>,
    pub classifier: Arc<PeerClassifier>,
    pub hub: Arc<RevocationHub>,
    pub clock: Arc<dyn Clock>,
    /// Where every call's duration and outcome is recorded.
    pub metrics: Metrics,
}

const MAX_CONCURRENT_CALLS_PER_CONNECTION: usize = 64;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The authenticated peer of a connection, available to every handler on it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub caller: Arc<Caller>,
    /// This connection's registration with the revocation hub.
    pub connection: u64,
}

/// The connection a request came on (see [`RevocationHub::defer_cut`]).
pub(crate) fn connection<T>(request: &Request<T>) -> Option<u64> {
    request.extensions().get::<PeerInfo>().map(|p| p.connection)
}

/// The caller of a request, as proved by its connection's client certificate; recorded as the
/// `caller` field of the handler's span.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<Arc<Caller>, Status> {
    let caller = request
        .extensions()
        .get::<PeerInfo>()
        .map(|p| p.caller.clone())
        .ok_or_else(unauthenticated)?;
    tracing::Span::current().record("caller", caller.id.as_str());
    Ok(caller)
}

/// Serves gRPC on `listener` until `shutdown` resolves.
pub async fn serve<S, F>(
    listener: TcpListener,
    server: GrpcServer<S>,
    shutdown: F,
) -> Result<(), tonic::transport::Error>
where
    S: CertificateStore,
    F: std::future::Future<Output = ()> + Send,
{
    let (tx, rx) = mpsc::channel::<Result<AuthedConn, io::Error>>(256);
    let acceptor = TlsAcceptor::from(server.tls.clone());
    let classifier = server.classifier.clone();
    let accept_loop = tokio::spawn(accept_loop(
        listener,
        acceptor,
        classifier,
        server.hub.clone(),
        tx,
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ProvisioningServer<ProvisioningService<S>>>()
        .await;
    health.set_serving::<AdminServer<AdminService<S>>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(mintgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1();
    let reflection_v1alpha = reflection().build_v1alpha();
    let (reflection_v1, reflection_v1alpha) = match (reflection_v1, reflection_v1alpha) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            // The descriptor sets are compiled into the binary; failing here is a build bug.
            tracing::error!(error = %e, "reflection descriptors do not load");
            accept_loop.abort();
            return Ok(());
        }
    };

    // Request shaping: a bounded number of concurrent calls per connection, a deadline for every
    // call, and messages no larger than the biggest valid request needs (a 16 KiB CSR).
    let result = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_CONCURRENT_CALLS_PER_CONNECTION)
        .timeout(CALL_TIMEOUT)
        .layer(RpcMetricsLayer::new(server.metrics.clone(), CALL_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            ProvisioningServer::new(ProvisioningService {
                app: server.app.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            RevocationServer::new(RevocationService {
                app: server.app.clone(),
                hub: server.hub.clone(),
                clock: server.clock,
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AdminServer::new(AdminService { app: server.app })
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await;
    accept_loop.abort();
    result
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    classifier: Arc<PeerClassifier>,
    hub: Arc<RevocationHub>,
    tx: mpsc::Sender<Result<AuthedConn, io::Error>>,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small frames (stream events, answers) go out at once instead of waiting up to a
        // delayed ACK (~40 ms) under Nagle's algorithm; tonic's own listener does the same.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%remote, error = %e, "TCP_NODELAY not set");
        }
        let acceptor = acceptor.clone();
        let classifier = classifier.clone();
        let hub = hub.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let Some(caller) = leaf.and_then(|leaf| classifier.classify(leaf)) else {
                tracing::warn!(%remote, "verified client certificate matches no configured CA");
                return;
            };
            tracing::debug!(%remote, caller = %caller.id, kind = caller.kind.as_str(), "connected");
            let guard = hub.register_connection(caller.serial.clone());
            let conn = AuthedConn {
                io: tls,
                revoked: Box::pin(guard.token().clone().cancelled_owned()),
                info: PeerInfo {
                    caller,
                    connection: guard.id(),
                },
                _guard: guard,
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

/// A TLS connection whose client certificate was verified and classified. It fails every read
/// and write once its certificate is revoked, which closes the connection and its streams.
struct AuthedConn {
    io: TlsStream<TcpStream>,
    revoked: Pin<Box<WaitForCancellationFutureOwned>>,
    _guard: ConnectionGuard,
    info: PeerInfo,
}

impl AuthedConn {
    fn check_revoked(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.revoked.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the peer's certificate was revoked",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl Connected for AuthedConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for AuthedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_revoked(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_revoked(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_revoked(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
