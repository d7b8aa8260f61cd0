//! The errors of the CA crate: loading the issuing CA, building and signing certificates, CRLs
//! and OCSP responses, and writing the dev PKI. One enum, sources chained; nothing here is ever sent to a client.

use std::path::PathBuf;

use time::OffsetDateTime;

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the CA certificate PEM could not be read")]
    CertificatePem(#[source] rustls_pki_types::pem::Error),
    #[error("the CA certificate PEM holds {found} certificates; exactly one is expected")]
    CertificateCount { found: usize },
    #[error("the CA certificate could not be parsed")]
    CertificateParse(#[source] x509_parser::error::X509Error),
    #[error("the CA certificate is not a CA: {reason}")]
    NotACa { reason: &'static str },
    #[error("certificate {position} of the CA chain (0 is the issuing CA): {reason}")]
    Chain {
        position: usize,
        reason: &'static str,
    },
    #[error("the CA private key could not be read (PKCS#8 PEM expected)")]
    KeyPem(#[source] rcgen::Error),
    #[error(
        "{} has mode {mode:o}: group and others must have no access (chmod 600)",
        path.display()
    )]
    KeyFileMode { path: PathBuf, mode: u32 },
    #[error("pkcs11: {0} ({reason})", reason = .0.reason())]
    Pkcs11(#[source] crate::pkcs11::Pkcs11Error),
    #[error("the CA private key does not match the CA certificate's public key")]
    KeyMismatch,
    #[error("the CA certificate's subject cannot be reproduced as an issuer name")]
    IssuerName(#[source] rcgen::Error),
    #[error("a certificate signed by this CA would not chain to it: {reason}")]
    SelfCheck { reason: &'static str },
    #[error("the subject public key is not one this CA can certify")]
    SubjectPublicKey(#[source] rcgen::Error),
    #[error("the subject public key is not in canonical DER form")]
    SubjectPublicKeyNotCanonical,
    #[error("the subject public key does not match the declared key type {declared}")]
    KeyTypeMismatch { declared: mintgate_domain::KeyType },
    #[error("a name in the certificate is not a valid IA5 string")]
    InvalidName(#[source] rcgen::Error),
    #[error(
        "the validity window is empty: notBefore {not_before} is not before notAfter {not_after} \
         (the CA certificate may have expired)"
    )]
    EmptyValidity {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    #[error("the signing key failed")]
    KeyUnavailable(#[source] rcgen::Error),
    #[error("the certificate could not be built or signed")]
    Build(#[source] rcgen::Error),
    #[error("the OCSP response could not be encoded")]
    OcspEncoding(#[source] x509_cert::der::Error),
    #[error("{at} cannot be written in an OCSP response")]
    OcspTime { at: OffsetDateTime },
    #[error("the CA key's signature algorithm has no identifier for OCSP responses")]
    OcspAlgorithm,
    #[error("a key could not be generated")]
    KeyGeneration(#[source] rcgen::Error),
    #[error("the system random number generator failed")]
    Random(#[source] ring::error::Unspecified),
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the dev PKI in {dir} is incomplete: {missing:?} missing while other files exist; \
         remove the remaining files of the dev PKI to generate a fresh one"
    )]
    PartialDevPki { dir: PathBuf, missing: Vec<PathBuf> },
}

impl CaError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
