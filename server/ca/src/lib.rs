//! Mintgate's signer: builds certificates from policy and signs them with a key behind one trait.
//!
//! - [`CertificateAuthority`] implements the domain's [`Signer`](mintgate_domain::ports::Signer)
//!   port with the certificate profile of DESIGN §4; its key is any [`KeyBackend`]: a PKCS#8
//!   [`FileKey`], a [`Pkcs11Key`] in a token ([`pkcs11`]), or [`CaKey`] for either. It signs
//!   certificates, CRLs and OCSP responses.
//! - [`ocsp`] reads OCSP requests, tells whether a CertID names the issuing CA, and encodes
//!   responses (RFC 6960).
//! - [`FileAuditSigner`] implements the [`AuditSigner`](mintgate_domain::ports::AuditSigner)
//!   port with the audit key that signs checkpoints; [`verify_signature`] checks one.
//! - [`verify_crl`] checks a CRL against the CA certificate that signed it (evidence exports).
//! - [`generate_pki`] / [`write_dev_pki`] make the insecure dev PKI, and [`is_dev_material`]
//!   recognises it so the server can refuse it outside `--dev`.
//!
//! This crate depends on the domain only; it must not depend on tokio, tonic, sea-orm or protobuf.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod audit_key;
mod authorities;
mod chain;
mod crl;
mod dev_pki;
mod error;
mod key;
pub mod ocsp;
pub mod pkcs11;
mod signer;
#[cfg(any(test, feature = "softhsm"))]
pub mod softhsm;
#[cfg(test)]
mod tests;

pub use audit_key::{
    AuditKeyError, ED25519_ALGORITHM, FileAuditSigner, P256_ALGORITHM, audit_key_from_pem,
    audit_key_from_spki, audit_key_pem, audit_keys_from_pem, verify_signature,
};
pub use authorities::{Authorities, AuthoritySet, KeyLoader, LoadedCa};
pub use chain::issuing_ca_csr;
pub use crl::{CrlError, CrlSummary, crl_der, verify_crl};
pub use dev_pki::{
    CertAndKey, DEV_ORGANIZATION, DEV_VALIDITY, DevPki, DevPkiPaths, dev_successor_ca,
    generate_pki, generate_pki_with_issuing_key, is_dev_material, write_dev_pki,
};
pub use error::CaError;
pub use key::{CaKey, FileKey, check_private_to_owner};
pub use pkcs11::{Pin, Pkcs11Config, Pkcs11Error, Pkcs11Key};
pub use signer::{CertificateAuthority, KeyBackend, subject_key_id_hex};
