//! The gRPC port's accept loop: admits each new connection or closes it at once (see
//! [`crate::admission`]), runs its TLS handshake within a timeout, and hands tonic the
//! authenticated connection, wrapped so that a revocation of its peer closes it.
//!
//! The loop itself never waits on a client: refusing is a counter update and a `close`, and
//! every handshake runs in a task of its own. When `accept` itself fails for want of resources
//! (`EMFILE`, `ENFILE`, `ENOBUFS`...), the loop backs off from 5 ms up to 200 ms instead of
//! spinning on a pending connection it cannot take, and says so in the log at most every 10 s.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{Accept, TlsAcceptor};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::transport::server::Connected;
use tracing::Instrument as _;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::admission::{Admission, Handshaking, Open, Throttle};
use crate::metrics::Metrics;
use crate::peer::PeerClassifier;
use crate::registry::{ConnectionGuard, RevocationHub};
use crate::server::PeerInfo;

/// The first and the longest pause after `accept` failed for want of resources.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(200));
/// At most one warning per this long for refused connections and failing accepts.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the accept loop needs.
pub(crate) struct Acceptor {
    pub(crate) tls: TlsAcceptor,
    pub(crate) classifier: Arc<PeerClassifier>,
    pub(crate) hub: Arc<RevocationHub>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) metrics: Metrics,
}

impl Acceptor {
    /// Accepts on `listener` forever, sending authenticated connections to `tx`.
    pub(crate) async fn run(
        self,
        listener: TcpListener,
        tx: mpsc::Sender<Result<AuthedConn, io::Error>>,
    ) {
        let this = Arc::new(self);
        let refused = Throttle::new(LOG_EVERY);
        let failing = Throttle::new(LOG_EVERY);
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(conn) => {
                    backoff = ACCEPT_BACKOFF.0;
                    conn
                }
                Err(e) if is_about_one_connection(&e) => {
                    tracing::debug!(error = %e, "accept: the connection went away first");
                    continue;
                }
                Err(e) => {
                    this.metrics.accept_failed();
                    if let Some(failures) = failing.tick() {
                        tracing::warn!(
                            error = %e,
                            failures,
                            "gRPC accept failed (out of file descriptors?); backing off"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            };
            let admitted = match this.admission.admit(remote.ip()) {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    let reason = refusal.as_str();
                    tracing::debug!(%remote, reason, "connection closed before its handshake");
                    if let Some(refused) = refused.tick() {
                        tracing::warn!(
                            reason,
                            refused,
                            "closing new gRPC connections at once: a limit in [grpc] is reached \
                             (mintgate_grpc_connections_refused_total has every reason)"
                        );
                    }
                    drop(tcp);
                    continue;
                }
            };
            // Small frames (stream events, answers) go out at once instead of waiting up to a
            // delayed ACK (~40 ms) under Nagle's algorithm; tonic's own listener does the same.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%remote, error = %e, "TCP_NODELAY not set");
            }
            // The span names the peer in whatever the handshake logs, such as a refusal of its
            // certificate by the verifier (which knows the serial but not the address).
            let span = tracing::info_span!("handshake", %remote);
            tokio::spawn(
                this.clone()
                    .connect(tcp, remote, admitted, tx.clone())
                    .instrument(span),
            );
        }
    }

    /// Runs one connection's handshake and hands it to tonic.
    async fn connect(
        self: Arc<Self>,
        tcp: TcpStream,
        remote: SocketAddr,
        admitted: Handshaking,
        tx: mpsc::Sender<Result<AuthedConn, io::Error>>,
    ) {
        let accept = self.tls.accept(tcp);
        tokio::pin!(accept);
        let tls = match self.handshake(accept.as_mut(), &admitted).await {
            Ok(tls) => tls,
            Err(failure) => {
                let reason = failure.reason();
                tracing::debug!(%remote, reason, error = %failure, "TLS handshake failed");
                self.metrics.handshake_failed(reason);
                // Counted and released before the socket (in `accept`) closes: whoever sees it
                // closed sees the counts too.
                drop(admitted);
                return;
            }
        };
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        let Some(caller) = leaf.and_then(|leaf| self.classifier.classify(leaf)) else {
            tracing::warn!(%remote, "verified client certificate matches no configured CA");
            return;
        };
        tracing::debug!(%remote, caller = %caller.id, kind = caller.kind.as_str(), "connected");
        let slot = admitted.authenticated();
        let issuer = leaf.and_then(|leaf| {
            let (_, cert) = X509Certificate::from_der(leaf).ok()?;
            mintgate_domain::key_ids::authority_key_id(&cert)
        });
        let guard = self.hub.register_connection(caller.serial.clone(), issuer);
        let conn = AuthedConn {
            io: tls,
            revoked: Box::pin(guard.token().clone().cancelled_owned()),
            info: PeerInfo {
                caller,
                connection: guard.id(),
            },
            _guard: guard,
            _slot: slot,
        };
        let _ = tx.send(Ok(conn)).await;
    }

    /// The TLS handshake, within its timeout: the normal one, or the shorter one once the
    /// server has been under pressure at any moment of it.
    async fn handshake(
        &self,
        mut accept: Pin<&mut Accept<TcpStream>>,
        admitted: &Handshaking,
    ) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
        let started = admitted.started();
        let mut pressure = self.admission.pressure();
        if !*pressure.borrow_and_update() {
            let deadline = started + self.admission.handshake_timeout(false);
            tokio::select! {
                done = accept.as_mut() => return done.map_err(HandshakeFailure::Tls),
                () = tokio::time::sleep_until(deadline.into()) => {
                    return Err(HandshakeFailure::TimedOut { under_pressure: false });
                }
                // The sender lives as long as `admitted`'s admission: no error to handle.
                Ok(_) = pressure.wait_for(|under| *under) => {}
            }
        }
        let deadline = started + self.admission.handshake_timeout(true);
        tokio::select! {
            done = accept => done.map_err(HandshakeFailure::Tls),
            () = tokio::time::sleep_until(deadline.into()) => {
                Err(HandshakeFailure::TimedOut { under_pressure: true })
            }
        }
    }
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
enum HandshakeFailure {
    /// The peer sent something TLS refuses, a certificate we do not accept, or hung up.
    #[error("{0}")]
    Tls(io::Error),
    #[error("not finished within the timeout")]
    TimedOut { under_pressure: bool },
}

impl HandshakeFailure {
    /// The `reason` label of the failed-handshakes counter: `certificate_revoked` when the
    /// verifier found the client certificate revoked (rustls then sent the peer the
    /// `certificate_revoked` alert), `tls` for every other TLS failure.
    fn reason(&self) -> &'static str {
        match self {
            Self::Tls(e) if is_revoked(e) => "certificate_revoked",
            Self::Tls(_) => "tls",
            Self::TimedOut {
                under_pressure: false,
            } => "timeout",
            Self::TimedOut {
                under_pressure: true,
            } => "pressure_timeout",
        }
    }
}

/// Whether a handshake failed because the client certificate is revoked. tokio-rustls hands
/// rustls's error back inside the `io::Error`.
fn is_revoked(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
            )
        })
}

/// `accept` errors about the one pending connection (it was reset before we took it), after
/// which the next `accept` may succeed at once; every other error is about the process.
fn is_about_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// A TLS connection whose client certificate was verified and classified. It fails every read
/// and write once its certificate is revoked, which closes the connection and its streams.
pub(crate) struct AuthedConn {
    io: TlsStream<TcpStream>,
    revoked: Pin<Box<WaitForCancellationFutureOwned>>,
    _guard: ConnectionGuard,
    /// Its descriptor in the connection count.
    _slot: Open,
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
