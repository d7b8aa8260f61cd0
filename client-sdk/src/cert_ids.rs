//! What the revocation set looks a certificate up by: its serial and its key identifiers, read
//! with x509-parser.

use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::normalize_serial;

/// What a certificate is looked up by.
pub(crate) struct CertificateIds {
    /// Normalised serial.
    pub(crate) serial: String,
    /// The issuing CA's key id (authority key identifier), normalised.
    pub(crate) authority_key_id: Option<String>,
    /// Its own key id (subject key identifier), normalised.
    pub(crate) subject_key_id: Option<String>,
}

impl CertificateIds {
    /// `None` if `der` is not a certificate.
    pub(crate) fn parse(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut ids = Self {
            serial: normalize_serial(&hex::encode(cert.raw_serial())),
            authority_key_id: None,
            subject_key_id: None,
        };
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    ids.authority_key_id = aki.key_identifier.as_ref().map(|k| hex::encode(k.0));
                }
                ParsedExtension::SubjectKeyIdentifier(ski) => {
                    ids.subject_key_id = Some(hex::encode(ski.0));
                }
                _ => {}
            }
        }
        Some(ids)
    }
}
