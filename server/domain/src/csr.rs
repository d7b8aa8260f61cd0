//! CSR validation (DESIGN §4): turns an untrusted PKCS#10 request into a [`ValidatedCsr`] that
//! holds only what issuance may take from it, the public key, the one SPIFFE ID and the DNS names.
//!
//! This module owns the CSR profile: input framing (PEM or DER, nothing around it), the key types
//! and signature algorithms Mintgate accepts, proof of possession, the requested extensions a client
//! may not ask for and the SAN rules. Every refusal is a user fault with its own stable reason code
//! ([`CsrError::reason`]). It does no I/O and never copies the subject DN or any extension.
//!
//! The order of checks is part of the contract: size, framing, parse, key, signature algorithm,
//! self-signature, extensions, SANs. Keys are judged before any signature is verified, so an
//! oversized RSA key costs nothing to refuse.

mod encoding;
mod extensions;
mod key;
mod san;
#[cfg(test)]
mod tests;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::prelude::FromDer;

use crate::{KeyType, SpiffeId, SpiffeIdError, TrustDomain};

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

/// Why a CSR was refused. All are caller faults (INVALID_ARGUMENT); the `Display` text is safe to
/// show to the caller and never echoes raw CSR bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("CSR could not be parsed as one PEM or DER PKCS#10 request")]
    Malformed,
    #[error("CSR is followed by other data (only one CSR, with nothing but whitespace around it)")]
    TrailingData,
    #[error("CSR public key is not correctly encoded")]
    PublicKeyInvalid,
    #[error("CSR key type is not allowed (allowed: P-256, P-384, Ed25519, RSA 2048/3072/4096)")]
    KeyTypeNotAllowed,
    #[error("RSA key of {bits} bits is not allowed (allowed: 2048, 3072, 4096)")]
    RsaKeySizeNotAllowed { bits: usize },
    #[error("RSA public exponent is not allowed (only 65537)")]
    RsaExponentNotAllowed,
    #[error(
        "CSR signature algorithm is not allowed (MD5, SHA-1 and unknown algorithms are refused)"
    )]
    SignatureAlgorithmNotAllowed,
    #[error("CSR self-signature does not verify with its own public key")]
    SignatureInvalid,
    #[error("CSR requests an extension that could not be parsed")]
    ExtensionMalformed,
    #[error("CSR requests the same extension twice")]
    ExtensionDuplicate,
    #[error("CSR requests a CA certificate (basicConstraints CA:TRUE or a path length)")]
    CaNotAllowed,
    #[error("CSR requests keyCertSign or cRLSign key usage")]
    KeyUsageNotAllowed,
    #[error("CSR requests an extended key usage other than clientAuth")]
    ExtendedKeyUsageNotAllowed,
    #[error("CSR requests name constraints")]
    NameConstraintsNotAllowed,
    #[error("CSR requests an unknown critical extension")]
    UnknownCriticalExtension,
    #[error("CSR has more than {max} subject alternative names")]
    TooManySans { max: usize },
    #[error("CSR must have exactly one URI SAN, found {found}")]
    UriSanCount { found: usize },
    #[error("a subject alternative name contains NUL or non-ASCII bytes")]
    SanInvalidCharacters,
    #[error(
        "subject alternative names of type {kind} are not allowed (only one URI and DNS names)"
    )]
    SanTypeNotAllowed { kind: &'static str },
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    SpiffeId(#[source] SpiffeIdError),
    #[error("wildcards are not allowed in subject alternative names")]
    WildcardNotAllowed,
    #[error("a DNS SAN is not a valid host name (LDH labels of 1-63 characters, 253 in all)")]
    DnsNameInvalid,
}

impl CsrError {
    /// The stable UPPER_SNAKE reason code sent to clients.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "CSR_TOO_LARGE",
            Self::Malformed => "CSR_MALFORMED",
            Self::TrailingData => "CSR_TRAILING_DATA",
            Self::PublicKeyInvalid => "PUBLIC_KEY_INVALID",
            Self::KeyTypeNotAllowed => "KEY_TYPE_NOT_ALLOWED",
            Self::RsaKeySizeNotAllowed { .. } => "RSA_KEY_SIZE_NOT_ALLOWED",
            Self::RsaExponentNotAllowed => "RSA_EXPONENT_NOT_ALLOWED",
            Self::SignatureAlgorithmNotAllowed => "SIGNATURE_ALGORITHM_NOT_ALLOWED",
            Self::SignatureInvalid => "CSR_SIGNATURE_INVALID",
            Self::ExtensionMalformed => "EXTENSION_MALFORMED",
            Self::ExtensionDuplicate => "EXTENSION_DUPLICATE",
            Self::CaNotAllowed => "CA_NOT_ALLOWED",
            Self::KeyUsageNotAllowed => "KEY_USAGE_NOT_ALLOWED",
            Self::ExtendedKeyUsageNotAllowed => "EXTENDED_KEY_USAGE_NOT_ALLOWED",
            Self::NameConstraintsNotAllowed => "NAME_CONSTRAINTS_NOT_ALLOWED",
            Self::UnknownCriticalExtension => "UNKNOWN_CRITICAL_EXTENSION",
            Self::TooManySans { .. } => "TOO_MANY_SANS",
            Self::UriSanCount { .. } => "URI_SAN_COUNT",
            Self::SanInvalidCharacters => "SAN_INVALID_CHARACTERS",
            Self::SanTypeNotAllowed { .. } => "SAN_TYPE_NOT_ALLOWED",
            Self::SpiffeId(e) => e.reason(),
            Self::WildcardNotAllowed => "WILDCARD_NOT_ALLOWED",
            Self::DnsNameInvalid => "DNS_NAME_INVALID",
        }
    }
}

/// Parses a PEM or DER CSR and checks it against the profile.
pub fn validate_csr(input: &[u8], trust_domain: &TrustDomain) -> Result<ValidatedCsr, CsrError> {
    if input.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge { max: MAX_CSR_BYTES });
    }
    let der = encoding::decode(input)?;
    let csr = parse_der(&der)?;
    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(CsrError::Malformed);
    }

    let key_type = key::classify(&info.subject_pki)?;
    key::check_signature_algorithm(&csr.signature_algorithm, key_type)?;
    csr.verify_signature().map_err(|e| match e {
        X509Error::SignatureUnsupportedAlgorithm => CsrError::SignatureAlgorithmNotAllowed,
        _ => CsrError::SignatureInvalid,
    })?;

    let requested = extensions::requested(&csr)?;
    let names = san::validate(requested.general_names, trust_domain)?;

    Ok(ValidatedCsr {
        spki_der: info.subject_pki.raw.to_vec(),
        key_type,
        spiffe_id: names.spiffe_id,
        dns_names: names.dns_names,
    })
}

/// Parses exactly one DER CertificationRequest, refusing bytes after it.
fn parse_der(der: &[u8]) -> Result<X509CertificationRequest<'_>, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingData);
    }
    Ok(csr)
}
