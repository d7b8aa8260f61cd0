//! The mTLS listener and the tonic router. tonic's own TLS never re-checks a peer after the
//! handshake, so we run our own rustls acceptor (the `acceptor` module) and hand tonic
//! already-authenticated connections (`serve_with_incoming`), each carrying the [`Caller`] it
//! proved to be.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use mintgate_domain::model::Caller;
use mintgate_domain::ports::Clock;
use mintgate_domain::service::Mintgate;
use mintgate_domain::store::CertificateStore;
use mintgate_proto::fanout::revocation_server::RevocationServer;
use mintgate_proto::v1::admin_server::AdminServer;
use mintgate_proto::v1::provisioning_server::ProvisioningServer;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use crate::acceptor::{Acceptor, AuthedConn};
use crate::admin::AdminService;
use crate::admission::Admission;
use crate::deadline::DeadlineLayer;
use crate::holds::HoldFeed;
use crate::metrics::Metrics;
use crate::peer::PeerClassifier;
use crate::provisioning::ProvisioningService;
use crate::refusals::RefusalLayer;
use crate::registry::RevocationHub;
use crate::revocation::RevocationService;
use crate::rpc_metrics::RpcMetricsLayer;
use crate::shedding::IssuanceGate;
use crate::status::unauthenticated;

/// How the gRPC port bounds its connections and calls (`[grpc]` in the server's config).
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// A call still unanswered after this is answered `DEADLINE_EXCEEDED` / `SERVER_TIMEOUT`.
    pub call_timeout: Duration,
    /// How long a new connection has to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// The same, while the server is under pressure (see the `admission` module).
    pub pressure_handshake_timeout: Duration,
    /// Handshakes in progress from which the server is under pressure (or half of
    /// `max_connections`, if lower).
    pub pressure_handshakes: usize,
    /// Handshakes in progress from one IPv4 address or IPv6 /64.
    pub max_handshakes_per_source: usize,
    /// Handshakes in progress in all.
    pub max_handshakes: usize,
    /// Connections open in all, handshaking or authenticated. The server crate lowers it to
    /// what the open-file limit leaves after its descriptor reserve.
    pub max_connections: usize,
    /// Enroll and Renew calls in progress in all; more are shed (see the `shedding` module).
    pub max_issuances_in_flight: usize,
    /// ... and per caller.
    pub max_issuances_per_caller: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            pressure_handshake_timeout: Duration::from_secs(1),
            pressure_handshakes: 128,
            max_handshakes_per_source: 64,
            max_handshakes: 1024,
            max_connections: usize::MAX,
            max_issuances_in_flight: 512,
            max_issuances_per_caller: 128,
        }
    }
}

/// What the gRPC server is made of.
pub struct GrpcServer<S> {
    pub app: Arc<Mintgate<S>>,
    pub tls: Arc<ServerConfig>,
    pub classifier: Arc<PeerClassifier>,
    pub hub: Arc<RevocationHub>,
    pub clock: Arc<dyn Clock>,
    /// What `Admin/ExportEvidence` streams.
    pub evidence: Arc<dyn crate::evidence::EvidenceExporter>,
    /// Where every call's duration and outcome is recorded.
    pub metrics: Metrics,
    /// Hold changes for Admin/WatchPending (the service's observer sends them).
    pub holds: HoldFeed,
    /// The trust bundle for Admin/ListAuthorities and Revocation/WatchTrustBundle.
    pub bundle: crate::BundleFeed,
    pub config: GrpcConfig,
}

/// Calls and HTTP/2 streams per connection (docs/limits.md). The SDK paces its issuances to
/// the same figure (`mintgate_sdk::ISSUANCES_ON_THE_WIRE`; a test holds them equal).
pub const MAX_CONCURRENT_CALLS_PER_CONNECTION: usize = 8;
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
    let acceptor = Acceptor {
        tls: TlsAcceptor::from(server.tls.clone()),
        classifier: server.classifier.clone(),
        hub: server.hub.clone(),
        admission: Admission::new(&server.config, server.metrics.clone()),
        metrics: server.metrics.clone(),
    };
    let accept_loop = tokio::spawn(acceptor.run(listener, tx));

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
    // call (the server's or the client's, whichever is sooner), and messages no larger than the
    // biggest valid request needs (a 16 KiB CSR). What tonic refuses by itself gets our
    // `ErrorInfo` on the way out; both layers sit inside the metrics layer so that it counts
    // the answer the client was sent.
    let result = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_CONCURRENT_CALLS_PER_CONNECTION)
        // ... and as many HTTP/2 streams open, so a client queues the rest on its side.
        .max_concurrent_streams(MAX_CONCURRENT_CALLS_PER_CONNECTION as u32)
        .layer(RpcMetricsLayer::new(server.metrics.clone()))
        .layer(RefusalLayer::new(MAX_MESSAGE_BYTES))
        .layer(DeadlineLayer::new(server.config.call_timeout))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            ProvisioningServer::new(ProvisioningService {
                app: server.app.clone(),
                gate: IssuanceGate::new(
                    server.config.max_issuances_in_flight,
                    server.config.max_issuances_per_caller,
                ),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            RevocationServer::new(RevocationService {
                app: server.app.clone(),
                hub: server.hub.clone(),
                clock: server.clock.clone(),
                bundle: server.bundle.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AdminServer::new(AdminService {
                app: server.app,
                clock: server.clock,
                evidence: server.evidence,
                holds: server.holds,
                bundle: server.bundle,
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await;
    accept_loop.abort();
    result
}
