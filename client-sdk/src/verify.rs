//! Revocation-aware rustls verifiers: the normal webpki verification, then a refusal of any peer
//! the live [`RevocationSet`] holds revoked: by its serial, or because the CA that issued it (its
//! authority key identifier) was revoked whole. Put them in your own `ServerConfig` or
//! `ClientConfig`, and a revoked peer is refused by your service within the propagation time.
//!
//! When the feed has been silent longer than [`RevocationCheck::max_staleness`], the verifier
//! either keeps accepting ([`WhenStale::FailOpen`]) or refuses everyone ([`WhenStale::FailClosed`]).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::watcher::RevocationSet;

/// What to do when the revocation feed is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenStale {
    /// Keep accepting peers that pass the other checks (availability first).
    FailOpen,
    /// Refuse every peer until the feed is fresh again (revocation first).
    FailClosed,
}

/// The revocation part of a verifier.
#[derive(Debug, Clone)]
pub struct RevocationCheck {
    /// The live revocation set (from a [`crate::RevocationWatcher`]).
    pub set: Arc<RevocationSet>,
    /// How long without an event or heartbeat before the view counts as stale. A set that has
    /// never heard from the server is stale.
    pub max_staleness: Duration,
    /// Accept or refuse while stale.
    pub when_stale: WhenStale,
}

impl RevocationCheck {
    /// Refuses a revoked certificate (its serial, or its issuing CA, revoked), one that came
    /// with a revoked CA among `intermediates` (a leaf the CA's key minted without naming it),
    /// and any certificate when stale and failing closed.
    pub fn check_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if intermediates
            .iter()
            .any(|ca| self.set.certificate_status(ca) == Some(true))
        {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        self.check(end_entity)
    }

    /// Refuses a revoked certificate (its serial, or its issuing CA, revoked), and any
    /// certificate when stale and failing closed.
    pub fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let stale = self
            .set
            .staleness()
            .is_none_or(|age| age > self.max_staleness);
        if stale && self.when_stale == WhenStale::FailClosed {
            tracing::warn!("revocation feed is stale; refusing the peer (fail-closed)");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        match self.set.certificate_status(end_entity) {
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            )),
            Some(true) => Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)),
            Some(false) => Ok(()),
        }
    }
}

/// A client-certificate verifier for your mTLS server: `inner` (e.g. rustls'
/// `WebPkiClientVerifier`) plus the revocation check.
#[derive(Debug)]
pub struct RevocationAwareClientVerifier {
    /// The verification done first (chain, validity, names).
    pub inner: Arc<dyn ClientCertVerifier>,
    /// Then the revocation check.
    pub check: RevocationCheck,
}

impl ClientCertVerifier for RevocationAwareClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.check.check_chain(end_entity, intermediates)?;
        Ok(verified)
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

/// A server-certificate verifier for your mTLS client: `inner` (e.g. rustls'
/// `WebPkiServerVerifier`) plus the revocation check.
#[derive(Debug)]
pub struct RevocationAwareServerVerifier {
    /// The verification done first (chain, validity, names).
    pub inner: Arc<dyn ServerCertVerifier>,
    /// Then the revocation check.
    pub check: RevocationCheck,
}

impl ServerCertVerifier for RevocationAwareServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.check.check_chain(end_entity, intermediates)?;
        Ok(verified)
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
