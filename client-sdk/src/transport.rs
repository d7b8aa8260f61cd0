//! How the SDK reaches Mintgate: TCP, then TLS with the caller's certificate (rustls, ring), then
//! HTTP/2 by tonic over our connector.
//!
//! tonic's own TLS hands a connection over as soon as the client's side of the handshake is
//! done. Under TLS 1.3 the server judges the client certificate only after that, so a refused
//! certificate (revoked, expired, from an unknown CA) came back as a TLS alert on a connection
//! tonic already used, and the first call failed as a broken connection, often without the
//! alert at all (`UNKNOWN: transport error`, `CANCELLED: operation was canceled`) — which reads
//! as "retry later". So this connector waits for the server's first bytes after the handshake,
//! which are either the HTTP/2 SETTINGS a server sends first on every connection or the alert
//! that refuses the certificate, before it hands the connection to tonic. A refusal then fails
//! [`crate::Client::connect`] at once with the alert's name (see [`refusal_in`]). The price is
//! one round trip before the first call of each new connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::{Error, TlsMaterial};

/// How many of the server's first bytes are read to learn its verdict (SETTINGS is a few dozen).
const FIRST_READ: usize = 1024;

/// A connected channel to `url` (`https://host:port`, or several separated by commas: replicas
/// of one Mintgate) whose certificate must name `server_name`. Each connection goes to the
/// address that answered last, or, when it does not answer, to the next one in the list: a
/// channel whose replica dies reconnects to another on its next call.
pub(crate) async fn channel(
    url: &str,
    server_name: &str,
    tls: &TlsMaterial,
    connect_timeout: Duration,
) -> Result<Channel, Error> {
    let mut origin = None;
    let mut addrs = Vec::new();
    for one in url.split(',').map(str::trim) {
        let bad_url = |why: String| Error::invalid("BAD_URL", format!("{one}: {why}"));
        let uri: Uri = one.parse().map_err(|e| bad_url(format!("{e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad_url("Mintgate is reached over https://".to_owned()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad_url("no host".to_owned()))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        addrs.push((host.to_owned(), authority.port_u16().unwrap_or(443)));
        origin.get_or_insert(uri);
    }
    let Some(origin) = origin else {
        return Err(Error::invalid("BAD_URL", "no server address".to_owned()));
    };
    let connector = Connector {
        config: Arc::new(client_config(tls)?),
        server_name: ServerName::try_from(server_name.to_owned())
            .map_err(|e| Error::invalid("BAD_SERVER_NAME", format!("{server_name}: {e}")))?,
        addrs: addrs.into(),
        preferred: Arc::new(AtomicUsize::new(0)),
    };
    // tonic refuses an https:// endpoint without its own TLS: it is given the same address as
    // http://, and the requests still name the (first) https origin.
    let authority = origin
        .authority()
        .map(ToString::to_string)
        .unwrap_or_default();
    let channel = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| Error::invalid("BAD_URL", format!("{url}: {e}")))?
        .origin(origin)
        .connect_timeout(connect_timeout)
        .connect_with_connector(connector)
        .await?;
    Ok(channel)
}

/// The TLS alert the server refused this client with, if that is what `error` (or an error it
/// came from) is.
pub(crate) fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<AlertDescription> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(ConnectError::Refused(alert)) = e.downcast_ref::<ConnectError>() {
            return Some(*alert);
        }
        // An `io::Error`'s `source()` skips the error it wraps: look at that one too.
        let wrapped = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        next = wrapped.or_else(|| e.source());
    }
    None
}

fn client_config(tls: &TlsMaterial) -> Result<ClientConfig, Error> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::invalid("BAD_TLS_MATERIAL", format!("{what}: {e}"))
    };
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| bad("CA certificate", &e))?;
        roots.add(ca).map_err(|e| bad("CA certificate", &e))?;
    }
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("client certificate", &e))?;
    let key =
        PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| bad("client key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("client certificate", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The server refused this client (its certificate, in practice) with this alert.
    #[error("the server refused this client's certificate (TLS alert {0:?})")]
    Refused(AlertDescription),
    #[error("the server closed the connection right after the TLS handshake")]
    Closed,
    #[error(transparent)]
    Io(io::Error),
}

impl ConnectError {
    fn from_io(e: io::Error) -> Self {
        let alert = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(|e| match e {
                rustls::Error::AlertReceived(alert) => Some(*alert),
                _ => None,
            });
        match alert {
            Some(alert) => Self::Refused(alert),
            None => Self::Io(e),
        }
    }
}

/// Opens TLS connections for tonic; see the module documentation.
#[derive(Clone)]
struct Connector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    /// Every replica's (host, port).
    addrs: Arc<[(String, u16)]>,
    /// The address tried first: the one that answered last.
    preferred: Arc<AtomicUsize>,
}

impl Connector {
    /// Tries each address, from the preferred one on, until one accepts this client. A refusal
    /// of the client's certificate is final: every replica would refuse it alike.
    async fn connect(self) -> Result<Confirmed, ConnectError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failed = ConnectError::Closed;
        for i in (0..self.addrs.len()).map(|k| (first + k) % self.addrs.len()) {
            let (host, port) = &self.addrs[i];
            match self.connect_to(host, *port).await {
                Ok(io) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(io);
                }
                Err(refused @ ConnectError::Refused(_)) => return Err(refused),
                Err(e) => failed = e,
            }
        }
        Err(failed)
    }

    async fn connect_to(&self, host: &str, port: u16) -> Result<Confirmed, ConnectError> {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(ConnectError::Io)?;
        // Small frames go out at once, as tonic's own connector does.
        let _ = tcp.set_nodelay(true);
        let mut io = TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(ConnectError::from_io)?;
        let mut first = vec![0; FIRST_READ];
        let n = io.read(&mut first).await.map_err(ConnectError::from_io)?;
        if n == 0 {
            return Err(ConnectError::Closed);
        }
        first.truncate(n);
        Ok(Confirmed {
            io,
            read_ahead: first,
            pos: 0,
        })
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<Confirmed>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

/// A TLS connection whose first bytes from the server were read ahead to learn its verdict;
/// they are read again first.
pub(crate) struct Confirmed {
    io: TlsStream<TcpStream>,
    read_ahead: Vec<u8>,
    pos: usize,
}

impl AsyncRead for Confirmed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.read_ahead.len() {
            let n = buf.remaining().min(self.read_ahead.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.read_ahead[start..start + n]);
            self.pos += n;
            if self.pos == self.read_ahead.len() {
                self.read_ahead = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Confirmed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
