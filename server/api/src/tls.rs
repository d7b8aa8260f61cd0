//! The server's rustls configuration: a client certificate is mandatory, must chain to one of
//! the configured roots (Mintgate's root, through its issuing CA; the bootstrap CA; the operator
//! CA), must be valid at
//! the injected clock's "now", and must carry exactly one SPIFFE ID in our trust domain.
//! It must not be revoked (the [`RevocationHub`]'s live set). Anything else fails the handshake;
//! no handler ever runs for it.

use std::sync::Arc;

use mintgate_domain::ports::Clock;
use mintgate_domain::{Serial, SpiffeId, TrustDomain};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::registry::RevocationHub;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("a trusted CA certificate could not be added to the root store")]
    BadRoot(#[source] rustls::Error),
    #[error("the client certificate verifier could not be built")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("the server certificate or key was refused")]
    ServerCert(#[source] rustls::Error),
}

/// Builds the server config. `client_cas` are the roots whose certificates may connect;
/// `intermediates` are the CAs between Mintgate's root and the certificates it issues (its
/// issuing CA), used to build a client's chain when the client sent only its own certificate.
pub fn server_config(
    client_cas: &[CertificateDer<'static>],
    intermediates: Vec<CertificateDer<'static>>,
    trust_domain: TrustDomain,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    clock: Arc<dyn Clock>,
    revocations: Arc<RevocationHub>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in client_cas {
        roots.add(ca.clone()).map_err(TlsError::BadRoot)?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(TlsError::Verifier)?;
    let verifier = Arc::new(SpiffeClientVerifier {
        inner,
        intermediates,
        trust_domain,
        revocations,
    });
    let mut config = ServerConfig::builder_with_details(provider, Arc::new(ClockTime(clock)))
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(TlsError::ServerCert)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_chain, server_key)
        .map_err(TlsError::ServerCert)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The one SPIFFE ID in a certificate's URI SANs, if there is exactly one and it parses.
pub fn spiffe_id_of(cert: &X509Certificate<'_>) -> Option<SpiffeId> {
    let mut uris = cert
        .extensions()
        .iter()
        .filter_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        });
    let san = uris.next()?;
    let mut ids = san.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let id = ids.next()?;
    if ids.next().is_some() || uris.next().is_some() {
        return None;
    }
    SpiffeId::parse(id).ok()
}

struct ClockTime(Arc<dyn Clock>);

impl std::fmt::Debug for ClockTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockTime")
    }
}

impl rustls::time_provider::TimeProvider for ClockTime {
    fn current_time(&self) -> Option<UnixTime> {
        let secs = u64::try_from(self.0.now().unix_timestamp()).ok()?;
        Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            secs,
        )))
    }
}

/// webpki's verification, the SPIFFE rules, and the revocation registry.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// Known intermediates, added to those the client sent.
    intermediates: Vec<CertificateDer<'static>>,
    trust_domain: TrustDomain,
    revocations: Arc<RevocationHub>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.intermediates.is_empty() {
            self.inner
                .verify_client_cert(end_entity, intermediates, now)?;
        } else {
            let mut chain = intermediates.to_vec();
            chain.extend(self.intermediates.iter().cloned());
            self.inner.verify_client_cert(end_entity, &chain, now)?;
        }
        let refuse =
            || rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);
        let (_, cert) = X509Certificate::from_der(end_entity).map_err(|_| refuse())?;
        let id = spiffe_id_of(&cert).ok_or_else(refuse)?;
        if id.trust_domain_str() != self.trust_domain.as_str() {
            // One trust domain per environment (DESIGN §13): a certificate from another is
            // refused, naming both (the client only sees a TLS alert).
            tracing::info!(
                spiffe_id = %id,
                trust_domain = id.trust_domain_str(),
                serves = %self.trust_domain,
                reason = "trust_domain_mismatch",
                "handshake refused: the client certificate is from trust domain {}, this server \
                 serves {}",
                id.trust_domain_str(),
                self.trust_domain
            );
            return Err(refuse());
        }
        let serial = Serial::from_der_bytes(cert.raw_serial()).map_err(|_| refuse())?;
        if self.revocations.is_revoked(&serial) {
            // Logged here, where the serial is known; the acceptor's `handshake` span adds the
            // peer's address. (This runs before the client proves it holds the key, so whoever
            // shows a revoked certificate is named by it, not identified.)
            tracing::info!(
                serial = %serial,
                spiffe_id = %id,
                reason = "certificate_revoked",
                "handshake refused: the client certificate is revoked"
            );
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
