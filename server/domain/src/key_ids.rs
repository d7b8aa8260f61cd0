//! The key identifiers that tie a certificate to its CA (RFC 5280 §4.2.1.1-2), as Mintgate
//! names CAs: lowercase hex.

use x509_parser::prelude::{ParsedExtension, X509Certificate};

/// The certificate's authority key identifier: the key id of the CA that signed it.
pub fn authority_key_id(cert: &X509Certificate<'_>) -> Option<String> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| hex::encode(id.0))
            }
            _ => None,
        })
}

/// The certificate's subject key identifier: a CA's own key id.
pub fn subject_key_id(cert: &X509Certificate<'_>) -> Option<String> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(hex::encode(id.0)),
            _ => None,
        })
}
