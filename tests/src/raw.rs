//! A gRPC client that speaks HTTP/2 itself (h2 over tokio-rustls), for what a generated client
//! will not do: send bytes that are not protobuf, send a `grpc-timeout` without enforcing it
//! (so the server's answer to it can be seen), call methods that do not exist, and show where
//! the status came: in the response headers (trailers-only) or in the trailers.
//!
//! Also [`tls_connect`], the bare mutual-TLS connection under it, for tests that look at what
//! happens below HTTP/2.

use std::net::SocketAddr;
use std::sync::Arc;

use h2::client::SendRequest;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::Bytes;
use tonic::codegen::http::{HeaderMap, Method, Request};

use crate::TestServer;

/// A mutual-TLS connection to `addr` with ALPN `h2`, holding `cert_pem`/`key_pem` and trusting
/// `ca_pem`. Returns once the client's side of the handshake is done; under TLS 1.3 the server
/// may still refuse the client certificate after that (its verdict is the next thing it sends).
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// One HTTP/2 connection to a test server, as one caller.
pub struct RawGrpc {
    send: SendRequest<Bytes>,
}

/// What came back for one call.
#[derive(Debug)]
pub struct RawAnswer {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// `None` for a trailers-only response (the status is in `headers`).
    pub trailers: Option<HeaderMap>,
}

impl RawAnswer {
    /// The call's status, from the trailers or, for a trailers-only response, the headers.
    pub fn status(&self) -> tonic::Status {
        self.trailers
            .as_ref()
            .and_then(tonic::Status::from_header_map)
            .or_else(|| tonic::Status::from_header_map(&self.headers))
            .expect("a grpc-status in the headers or the trailers")
    }
}

impl RawGrpc {
    /// Connects as the holder of `cert_pem`/`key_pem`.
    pub async fn connect(server: &TestServer, cert_pem: &str, key_pem: &str) -> Self {
        let tls = tls_connect(server.grpc_addr, &server.pki.ca.cert_pem, cert_pem, key_pem)
            .await
            .unwrap();
        let (send, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { send }
    }

    /// Connects as the dev node.
    pub async fn node(server: &TestServer) -> Self {
        Self::connect(server, &server.pki.node.cert_pem, &server.pki.node.key_pem).await
    }

    /// Calls `path` with `message` framed as one gRPC message (uncompressed).
    pub async fn call(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        message: &[u8],
    ) -> RawAnswer {
        let mut body = Vec::with_capacity(5 + message.len());
        body.push(0);
        body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        body.extend_from_slice(message);
        self.call_body(path, headers, Bytes::from(body)).await
    }

    /// Calls `path` with `body` as the whole request body, framing and all.
    pub async fn call_body(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> RawAnswer {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("https://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let send = self.send.clone().ready().await.unwrap();
        self.send = send;
        let (response, mut stream) = self
            .send
            .send_request(request.body(()).unwrap(), false)
            .unwrap();
        // A refusal made from the headers alone (an unknown method, say) may have closed the
        // stream before the body goes out; the answer then says what happened.
        let _ = stream.send_data(body, true);
        let response = response.await.unwrap();
        let (parts, mut received) = response.into_parts();
        let mut body = Vec::new();
        while let Some(chunk) = received.data().await {
            let chunk = chunk.unwrap();
            let _ = received.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        let trailers = if parts.headers.contains_key("grpc-status") {
            None
        } else {
            received.trailers().await.unwrap()
        };
        RawAnswer {
            headers: parts.headers,
            body,
            trailers,
        }
    }
}
