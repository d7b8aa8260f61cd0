//! CSR validation (DESIGN §4). STUB: to be replaced by the full implementation.

use crate::{KeyType, SpiffeId, TrustDomain};

/// Largest CSR accepted, PEM or DER, in bytes.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Most SAN entries accepted in one CSR.
pub const MAX_SANS: usize = 32;

/// What issuance may take from a CSR whose self-signature verified: the public key, the one
/// SPIFFE ID and the DNS names. Nothing else from the CSR ever reaches a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedCsr {
    /// The DER SubjectPublicKeyInfo, exactly as in the CSR.
    pub spki_der: Vec<u8>,
    pub key_type: KeyType,
    pub spiffe_id: SpiffeId,
    /// Lower-case, validated DNS names (policy decides whether they are allowed).
    pub dns_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR could not be parsed")]
    Malformed,
}

impl CsrError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "CSR_MALFORMED",
        }
    }
}

/// Parses a PEM or DER CSR and checks it against the profile.
pub fn validate_csr(_input: &[u8], _trust_domain: &TrustDomain) -> Result<ValidatedCsr, CsrError> {
    Err(CsrError::Malformed)
}
