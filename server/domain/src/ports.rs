//! The ports the domain needs from the outside world. Adapters live in other crates:
//! the signer in `mintgate-ca`, storage in `mintgate-store`, the clock in the server.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use time::OffsetDateTime;

use crate::{KeyType, Serial, SpiffeId};

/// Where "now" comes from. Tests inject a clock they move by hand.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
    /// Waits (used only to poll for a concurrent duplicate request to finish).
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A source of unpredictable bytes (serials, token ids).
pub trait Random: Send + Sync + 'static {
    fn fill(&self, buf: &mut [u8]);
}

/// Everything the signer needs to build a certificate. The profile (extensions, key usages) is
/// the signer's job; only these values vary per certificate.
#[derive(Debug, Clone)]
pub struct IssueSpec<'a> {
    /// DER SubjectPublicKeyInfo from the validated CSR.
    pub spki_der: &'a [u8],
    pub key_type: KeyType,
    pub spiffe_id: &'a SpiffeId,
    pub dns_names: &'a [String],
    pub serial: &'a Serial,
    pub not_before: OffsetDateTime,
    /// End of validity, already cut to [`Signer::not_after`] by the caller; the signer cuts it
    /// there too, should a caller not have.
    pub not_after: OffsetDateTime,
    /// Add the serverAuth EKU (only where policy grants it).
    pub server_auth: bool,
}

/// A signed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCertificate {
    pub der: Vec<u8>,
    /// Hex SKI of the CA that signed it.
    pub issuer_key_id: String,
    /// The leaf then the issuing CA, PEM.
    pub chain_pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// What a CRL lists, and when.
#[derive(Debug, Clone)]
pub struct CrlSpec<'a> {
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    /// Monotonic CRL number: the revocation log's head sequence number.
    pub number: u64,
    /// The CA that signs it (hex SKI); `entries` are what it signed.
    pub issuer_key_id: &'a str,
    pub entries: &'a [CrlEntry],
}

/// One revoked certificate as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    pub serial: crate::Serial,
    pub revoked_at: OffsetDateTime,
    pub reason: crate::model::RevocationReason,
}

/// What an OCSP response (RFC 6960) says, and when it was produced.
#[derive(Debug, Clone)]
pub struct OcspSpec<'a> {
    /// producedAt: when the response is signed.
    pub produced_at: OffsetDateTime,
    /// The CA the request's CertIDs name (hex SKI): it signs the response.
    pub issuer_key_id: &'a str,
    /// One answer per certificate asked about, in the request's order.
    pub responses: &'a [OcspEntry],
    /// The request's nonce extension value (extnValue, DER), echoed unchanged.
    pub nonce: Option<&'a [u8]>,
}

/// One certificate's status in an OCSP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspEntry {
    /// The request's CertID (DER), answered exactly as it was asked.
    pub cert_id: Vec<u8>,
    pub status: OcspStatus,
    /// When the status is known to have been correct (the registry was read).
    pub this_update: OffsetDateTime,
    /// When a newer answer will be available; a relying party may cache this one until then.
    pub next_update: OffsetDateTime,
}

/// A certificate status as OCSP states it (RFC 6960 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspStatus {
    Good,
    Revoked {
        revoked_at: OffsetDateTime,
        reason: crate::model::RevocationReason,
    },
    /// Not a certificate this CA issued, or one it no longer vouches for.
    Unknown,
}

/// Why signing failed. Always a system fault.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("the signing key is unavailable")]
    Unavailable(#[source] crate::error::Cause),
    #[error("the certificate could not be built")]
    Build(#[source] crate::error::Cause),
}

/// Signs certificates, CRLs and OCSP responses with the issuing CA's key, which never leaves
/// the implementation (a file today, an HSM later).
pub trait Signer: Send + Sync + 'static {
    fn sign(&self, spec: &IssueSpec<'_>) -> Result<SignedCertificate, SignerError>;
    /// Signs a CRL (RFC 5280, DER) listing `spec.entries`.
    fn sign_crl(&self, spec: &CrlSpec<'_>) -> Result<Vec<u8>, SignerError>;
    /// Signs a basic OCSP response (RFC 6960) listing `spec.responses`, as the issuing CA
    /// itself (no delegated responder), and returns the whole OCSPResponse, DER.
    fn sign_ocsp(&self, spec: &OcspSpec<'_>) -> Result<Vec<u8>, SignerError>;
    /// PEM of the CA certificate(s) that verify what this signer issues.
    fn trust_bundle_pem(&self) -> String;
    /// Hex subject key identifier of the issuing CA (the AKI of what it signs).
    fn issuer_key_id(&self) -> String;
    /// The issuing CA certificate's notAfter: nothing it signs outlives it.
    fn not_after(&self) -> OffsetDateTime;
    /// How far certificates are backdated to absorb clock skew.
    fn backdate(&self) -> Duration {
        Duration::from_secs(30)
    }
    /// Checks a CA proposed for rotation: `chain_pem` (the CA, then up to its root) must be a
    /// CA this signer could use with the key at `key_ref`. A signer without rotation refuses.
    fn inspect(&self, _chain_pem: &str, _key_ref: &str) -> Result<InspectedCa, String> {
        Err("this server cannot rotate its CA".to_owned())
    }
}

/// A CA checked by [`Signer::inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedCa {
    pub key_id: String,
    pub prepared: crate::authority::PreparedCa,
}

/// Signs audit checkpoints ([`crate::audit::Checkpoint::message`]) with the audit key: a key of
/// its own, never the CA's, held like it (a file now, PKCS#11 later). The private key never
/// leaves the backend.
pub trait AuditSigner: Send + Sync + 'static {
    /// The public key, with its id and algorithm.
    fn public_key(&self) -> &crate::audit::AuditKey;
    /// A signature of `message`, in the encoding the key's algorithm verifies (Ed25519: 64
    /// bytes; ECDSA P-256: fixed-length r ‖ s).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignerError>;
}

/// What the service reports beside its answers, for metrics and logs (the server counts and
/// logs; tests may listen). Every method has a default that does nothing.
pub trait Observer: Send + Sync + 'static {
    /// A shadowed policy decided an issuance request differently from the active one.
    fn shadow_disagreement(&self, _disagreement: &crate::service::ShadowDisagreement) {}
    /// An operator acted on the strength of the break-glass `admin` role alone.
    fn break_glass(&self, _operator: &SpiffeId, _operation: crate::policy::Operation) {}
    /// The active policy version changed (at start, by approval here or on another replica).
    fn policy_active(&self, _version: &str, _drift: bool) {}
    /// An Enroll or Renew was assessed (each time it is decided: first, and on a retry that
    /// takes it over).
    fn risk_assessed(&self, _risk: &crate::risk::RiskAssessment) {}
    /// A hold changed here: held, approved, released, denied or expired.
    fn hold_changed(&self, _event: &crate::service::HoldEvent) {}
    /// A CA changed state here (prepared, activated, retired or revoked).
    fn authorities_changed(&self) {}
}

/// An [`Observer`] that ignores everything.
pub struct Unobserved;

impl Observer for Unobserved {}

/// Where the `jwt` attestor's keys come from: a JWKS file or HTTPS URL the server reads. The
/// source bounds how often it reads, so a caller sending tokens with made-up key ids cannot make
/// it fetch more often than that.
pub trait KeySource: Send + Sync + 'static {
    /// The key set as last read.
    fn current(&self) -> std::sync::Arc<crate::jwt::JwkSet>;
    /// A token named a key the set lacks: read the keys again unless they were read too
    /// recently, and return the set to retry with (the one it has when it did not read);
    /// `None` when there is nothing to retry with.
    fn refresh(
        &self,
    ) -> Pin<Box<dyn Future<Output = Option<std::sync::Arc<crate::jwt::JwkSet>>> + Send + '_>>;
}
