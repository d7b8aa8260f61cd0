//! An mTLS server that refuses revoked clients, without restarting.
//!
//! With `mintgate serve --dev` running in the repository root, from that directory:
//!
//! ```sh
//! cargo run -p mintgate-sdk --example mtls_server
//! ```
//!
//! It listens on 127.0.0.1:9443 with a Mintgate certificate of its own (enrolled through the dev
//! node), accepts any client holding a Mintgate workload certificate, and follows the revocation
//! feed: revoke a client's certificate (see the README's tour) and its next handshake fails.

use std::sync::Arc;
use std::time::Duration;

use mintgate_sdk::{
    Client, RevocationAwareClientVerifier, RevocationCheck, RevocationWatcher, TlsMaterial,
    WatcherConfig, WhenStale, key_and_csr, v1,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const URL: &str = "https://127.0.0.1:8443";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ca_pem = std::fs::read_to_string("certs-dev/ca.pem")?;
    // This server's own identity, with a DNS name so clients can verify it.
    let node = TlsMaterial {
        ca_pem: ca_pem.clone(),
        cert_pem: std::fs::read_to_string("certs-dev/node.pem")?,
        key_pem: std::fs::read_to_string("certs-dev/node.key")?,
    };
    let (key, csr) = key_and_csr("spiffe://dev.mintgate.local/workload/example-server")?;
    let issued = Client::connect(URL, "localhost", &node)
        .await?
        .enroll(v1::EnrollRequest {
            csr: csr.into_bytes(),
            ..Default::default()
        })
        .await?;
    let me = TlsMaterial {
        ca_pem: ca_pem.clone(),
        cert_pem: issued.certificate_chain_pem,
        key_pem: key.serialize_pem(),
    };

    // Follow the revocation feed as this server's own identity.
    let feed_identity = me.clone();
    let watcher = RevocationWatcher::spawn(
        Arc::new(move || {
            let tls = feed_identity.clone();
            Box::pin(async move { Client::connect(URL, "localhost", &tls).await })
        }),
        WatcherConfig::default(),
    )?;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier = RevocationAwareClientVerifier {
        inner: WebPkiClientVerifier::builder(Arc::new(roots)).build()?,
        check: RevocationCheck {
            set: watcher.set(),
            max_staleness: Duration::from_secs(30),
            when_stale: WhenStale::FailClosed,
        },
    };
    let chain = CertificateDer::pem_slice_iter(me.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, PrivateKeyDer::from_pem_slice(me.key_pem.as_bytes())?)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:9443").await?;
    println!(
        "listening on 127.0.0.1:9443; try: openssl s_client -connect 127.0.0.1:9443 -cert web.pem -key web.key -CAfile certs-dev/ca.pem"
    );
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let _ = tls
                        .write_all(b"hello from an mTLS server that knows about revocations\n")
                        .await;
                    let _ = tls.shutdown().await;
                }
                Err(e) => println!("{peer}: refused: {e}"),
            }
        });
    }
}
