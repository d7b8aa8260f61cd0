//! The server's rustls configuration: a client certificate is mandatory, must chain to one of
//! the configured roots (Mintgate's root, through its issuing CA; the bootstrap CA; the operator
//! CA), must be valid at
//! the injected clock's "now", and must carry exactly one SPIFFE ID in our trust domain.
//! It must not be revoked (the [`RevocationHub`]'s live set). Anything else fails the handshake;
//! no handler ever runs for it.

use std::sync::{Arc, PoisonError, RwLock};

use mintgate_domain::key_ids::{authority_key_id, subject_key_id};
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

/// Mintgate's own issuing CAs as the listener trusts them (every CA in the trust bundle, with
/// the chain above it), beside the fixed roots of the bootstrap and operator CAs. Swapped
/// whole when the trust bundle changes ([`ClientTrust::update`]); a handshake sees one version.
#[derive(Debug)]
pub struct ClientTrust {
    fixed_roots: Vec<CertificateDer<'static>>,
    current: RwLock<Arc<TrustState>>,
}

#[derive(Debug)]
struct TrustState {
    verifier: Arc<dyn ClientCertVerifier>,
    /// The CAs between a root and the certificates it vouches for, added to a client's chain.
    intermediates: Vec<CertificateDer<'static>>,
    /// Mintgate's issuing CAs: a certificate one of them signed is a workload's.
    issuing: Arc<[CertificateDer<'static>]>,
}

impl ClientTrust {
    /// `fixed_roots` are the bootstrap and operator CAs; `issuing_chains` each of Mintgate's
    /// issuing CAs followed by the CAs above it, up to its root.
    pub fn new(
        fixed_roots: Vec<CertificateDer<'static>>,
        issuing_chains: &[Vec<CertificateDer<'static>>],
    ) -> Result<Arc<Self>, TlsError> {
        let state = build_trust(&fixed_roots, issuing_chains)?;
        Ok(Arc::new(Self {
            fixed_roots,
            current: RwLock::new(Arc::new(state)),
        }))
    }

    /// Trusts exactly `issuing_chains` (and the fixed roots) from the next handshake on.
    pub fn update(&self, issuing_chains: &[Vec<CertificateDer<'static>>]) -> Result<(), TlsError> {
        let state = build_trust(&self.fixed_roots, issuing_chains)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
        Ok(())
    }

    /// Mintgate's issuing CAs trusted now (shared, not copied: asked on every connection).
    pub fn issuing(&self) -> Arc<[CertificateDer<'static>]> {
        self.state().issuing.clone()
    }

    fn state(&self) -> Arc<TrustState> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn build_trust(
    fixed_roots: &[CertificateDer<'static>],
    issuing_chains: &[Vec<CertificateDer<'static>>],
) -> Result<TrustState, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut intermediates = Vec::new();
    let mut issuing = Vec::new();
    for chain in issuing_chains {
        let Some((root, between)) = chain.split_last() else {
            continue;
        };
        roots.add(root.clone()).map_err(TlsError::BadRoot)?;
        intermediates.extend(between.iter().cloned());
        issuing.extend(chain.first().cloned());
    }
    for ca in fixed_roots {
        roots.add(ca.clone()).map_err(TlsError::BadRoot)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(TlsError::Verifier)?;
    Ok(TrustState {
        verifier,
        intermediates,
        issuing: issuing.into(),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server config: a client certificate must chain to a root `trust` holds now.
pub fn server_config(
    trust: Arc<ClientTrust>,
    trust_domain: TrustDomain,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    clock: Arc<dyn Clock>,
    revocations: Arc<RevocationHub>,
) -> Result<ServerConfig, TlsError> {
    let hints = trust.state().verifier.root_hint_subjects().to_vec();
    let verifier = Arc::new(SpiffeClientVerifier {
        trust,
        hints,
        trust_domain,
        revocations,
    });
    let mut config = ServerConfig::builder_with_details(provider(), Arc::new(ClockTime(clock)))
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
    trust: Arc<ClientTrust>,
    /// The roots trusted at start, named to clients (a hint; clients may send any certificate).
    hints: Vec<DistinguishedName>,
    trust_domain: TrustDomain,
    revocations: Arc<RevocationHub>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.trust.state();
        if trust.intermediates.is_empty() {
            trust
                .verifier
                .verify_client_cert(end_entity, intermediates, now)?;
        } else {
            let mut chain = intermediates.to_vec();
            chain.extend(trust.intermediates.iter().cloned());
            trust.verifier.verify_client_cert(end_entity, &chain, now)?;
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
        // Its issuer, as the leaf names it, or any CA it came with: a leaf minted with a
        // revoked CA's key need not name it.
        let presented = intermediates.iter().filter_map(|ca| {
            let (_, ca) = X509Certificate::from_der(ca).ok()?;
            subject_key_id(&ca)
        });
        if let Some(issuer) = authority_key_id(&cert)
            .into_iter()
            .chain(presented)
            .find(|issuer| self.revocations.is_issuer_revoked(issuer))
        {
            tracing::info!(
                serial = %serial,
                spiffe_id = %id,
                issuer = %issuer,
                reason = "issuer_revoked",
                "handshake refused: the CA that signed the client certificate is revoked"
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
        self.trust
            .state()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .state()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.state().verifier.supported_verify_schemes()
    }
}
