//! Checking a CRL against the CA certificate that should have signed it (x509-parser's
//! signature check, ring underneath): for evidence exports, where the CRL is carried beside the
//! CA certificate and re-checked offline.

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// Why a CRL does not verify.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("the CA certificate file is not PEM")]
    CaPem(#[source] rustls_pki_types::pem::Error),
    #[error("the CA certificate file holds no certificate")]
    NoCa,
    #[error("the CA certificate file holds a certificate that does not parse")]
    CaParse(#[source] x509_parser::error::X509Error),
    #[error("not a DER or PEM CRL")]
    CrlParse(#[source] x509_parser::error::X509Error),
    #[error("issued by {issuer}, which is not the subject of any certificate in the CA file")]
    UnknownIssuer { issuer: String },
    #[error(
        "its signature does not verify under the CA certificate {subject} (the CRL was altered \
         or signed by another key)"
    )]
    BadSignature { subject: String },
}

/// What a CRL that verified says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    pub issuer: String,
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
    /// How many certificates it lists.
    pub revoked: usize,
}

/// The DER of a CRL given as DER or as an `X509 CRL` PEM block.
pub fn crl_der(bytes: &[u8]) -> Result<Vec<u8>, CrlError> {
    if bytes.starts_with(b"-----") {
        return CertificateRevocationListDer::from_pem_slice(bytes)
            .map(|der| der.as_ref().to_vec())
            .map_err(|_| CrlError::CrlParse(x509_parser::error::X509Error::InvalidCertificate));
    }
    Ok(bytes.to_vec())
}

/// Checks that the DER CRL `crl` is signed by a certificate in `ca_pem` (PEM, one or more
/// certificates) whose subject is the CRL's issuer.
pub fn verify_crl(ca_pem: &[u8], crl: &[u8]) -> Result<CrlSummary, CrlError> {
    let cas = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CrlError::CaPem)?;
    if cas.is_empty() {
        return Err(CrlError::NoCa);
    }
    let (_, list) =
        CertificateRevocationList::from_der(crl).map_err(|e| CrlError::CrlParse(e.into()))?;
    let issuer = list.issuer();
    let mut named = None;
    for der in &cas {
        let (_, ca) = X509Certificate::from_der(der).map_err(|e| CrlError::CaParse(e.into()))?;
        if ca.subject().as_raw() != issuer.as_raw() {
            continue;
        }
        if list.verify_signature(ca.public_key()).is_ok() {
            return Ok(CrlSummary {
                issuer: issuer.to_string(),
                this_update: list.last_update().to_datetime(),
                next_update: list.next_update().map(|t| t.to_datetime()),
                revoked: list.iter_revoked_certificates().count(),
            });
        }
        named = Some(ca.subject().to_string());
    }
    Err(match named {
        Some(subject) => CrlError::BadSignature { subject },
        None => CrlError::UnknownIssuer {
            issuer: issuer.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use mintgate_domain::ports::CrlSpec;

    use super::*;
    use crate::{CertificateAuthority, generate_pki};

    fn signed_crl(ca: &CertificateAuthority) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        ca.crl(&CrlSpec {
            issuer_key_id: "",
            this_update: now,
            next_update: now + time::Duration::hours(1),
            number: 7,
            entries: &[],
        })
        .unwrap()
    }

    #[test]
    fn a_crl_verifies_under_its_ca_and_not_under_another_or_altered() {
        let td = mintgate_domain::TrustDomain::parse("td.example").unwrap();
        let now = OffsetDateTime::now_utc();
        let (one, two) = (
            generate_pki(&td, now).unwrap(),
            generate_pki(&td, now).unwrap(),
        );
        let ca = CertificateAuthority::from_pem(&one.ca.cert_pem, &one.ca.key_pem, None).unwrap();
        let crl = signed_crl(&ca);
        let summary = verify_crl(one.ca.cert_pem.as_bytes(), &crl).unwrap();
        assert_eq!(summary.revoked, 0);
        assert_eq!(crl_der(&crl).unwrap(), crl);

        // Same subject, another key: the signature gives it away.
        let err = verify_crl(two.ca.cert_pem.as_bytes(), &crl).unwrap_err();
        assert!(matches!(err, CrlError::BadSignature { .. }), "{err}");
        // One byte of the signature changed.
        let mut altered = crl.clone();
        *altered.last_mut().unwrap() ^= 1;
        let err = verify_crl(one.ca.cert_pem.as_bytes(), &altered).unwrap_err();
        assert!(matches!(err, CrlError::BadSignature { .. }), "{err}");
        // Not a CRL at all; no CA at all.
        assert!(matches!(
            verify_crl(one.ca.cert_pem.as_bytes(), b"junk").unwrap_err(),
            CrlError::CrlParse(_)
        ));
        assert!(matches!(verify_crl(b"", &crl).unwrap_err(), CrlError::NoCa));
    }
}
