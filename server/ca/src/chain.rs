//! The issuing CA's chain: the issuing CA certificate first, then each certificate that signed
//! the one before it, up to a self-signed root. Mintgate's issuing CA is normally an
//! intermediate under an offline root (`mintgate ca csr` / `ca import`); a self-signed issuing
//! CA alone is its own chain.
//!
//! [`check_chain`] checks the links with x509-parser (names and signatures); what the chain
//! means for clients (what leaves carry, what the trust bundle holds) is the
//! [`CertificateAuthority`](crate::CertificateAuthority)'s. [`issuing_ca_csr`] asks a root for
//! an issuing CA certificate.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    SigningKey,
};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

use crate::CaError;
use crate::signer::{check_is_ca, parse_certificate};

/// Checks that `chain` (issuing CA first) links up to a self-signed root: every certificate after
/// the first is a CA whose subject is the previous one's issuer and whose key verifies its
/// signature, and the last one signed itself.
pub(crate) fn check_chain(chain: &[CertificateDer<'static>]) -> Result<(), CaError> {
    let parsed = chain
        .iter()
        .map(|der| parse_certificate(der))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(last) = parsed.last() else {
        return Err(CaError::CertificateCount { found: 0 });
    };
    for (position, pair) in parsed.windows(2).enumerate() {
        let [child, parent] = pair else { continue };
        check_is_ca(parent).map_err(|e| CaError::Chain {
            position: position + 1,
            reason: match e {
                CaError::NotACa { reason } => reason,
                _ => "it does not parse as a CA certificate",
            },
        })?;
        if child.issuer().as_raw() != parent.subject().as_raw() {
            return Err(CaError::Chain {
                position: position + 1,
                reason: "its subject is not the issuer of the certificate before it",
            });
        }
        if child.verify_signature(Some(parent.public_key())).is_err() {
            return Err(CaError::Chain {
                position: position + 1,
                reason: "its key does not verify the signature of the certificate before it",
            });
        }
    }
    if !self_signed(last) {
        return Err(CaError::Chain {
            position: parsed.len() - 1,
            reason: if parsed.len() == 1 {
                "the issuing CA is not self-signed and no chain follows it: append the \
                 certificates up to the root (intermediates, then the root) to ca.cert"
            } else {
                "the last certificate is not a self-signed root"
            },
        });
    }
    Ok(())
}

/// A PEM certificate signing request for an issuing CA with `key`: the subject asked for,
/// basicConstraints CA:TRUE with pathLen 0 and keyUsage keyCertSign + cRLSign (the root's
/// operator decides what the certificate finally says; `ca import` checks it).
pub fn issuing_ca_csr<K: SigningKey>(
    key: &K,
    common_name: &str,
    organization: Option<&str>,
) -> Result<String, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(o) = organization {
        params.distinguished_name.push(DnType::OrganizationName, o);
    }
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(CaError::Build)
}

fn self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == cert.subject().as_raw()
        && cert.verify_signature(Some(cert.public_key())).is_ok()
}
