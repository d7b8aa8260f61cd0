//! The extensionRequest attribute: which extensions a client may ask for. None of them is ever
//! copied into a certificate; they are checked so that a request for CA powers, signing usages or
//! something we do not understand is refused instead of silently dropped. Returns the requested
//! SAN entries for [`super::san`].

use std::collections::HashSet;

use x509_parser::asn1_rs::Any;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{
    BasicConstraints, ExtendedKeyUsage, GeneralName, KeyUsage, ParsedExtension, X509Extension,
};
use x509_parser::oid_registry::{
    OID_PKCS9_EXTENSION_REQUEST, OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE,
    OID_X509_EXT_KEY_USAGE, OID_X509_EXT_NAME_CONSTRAINTS, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;

use super::CsrError;

/// What the extension checks hand on: the SAN entries, empty if no SAN was requested.
pub(super) struct Requested<'c> {
    pub general_names: &'c [GeneralName<'c>],
}

/// Checks the requested extensions and returns the SAN entries.
pub(super) fn requested<'c>(
    csr: &'c X509CertificationRequest<'c>,
) -> Result<Requested<'c>, CsrError> {
    let mut requests = csr
        .certification_request_info
        .attributes()
        .iter()
        .filter(|attr| attr.oid == OID_PKCS9_EXTENSION_REQUEST);
    let Some(attr) = requests.next() else {
        return Ok(Requested { general_names: &[] });
    };
    if requests.next().is_some() {
        return Err(CsrError::ExtensionDuplicate);
    }
    // x509-parser reads only the first value of the attribute's SET; a second one would be unseen.
    if set_len(attr.value)? != 1 {
        return Err(CsrError::ExtensionDuplicate);
    }
    let ParsedCriAttribute::ExtensionRequest(request) = attr.parsed_attribute() else {
        return Err(CsrError::ExtensionMalformed);
    };

    let mut seen = HashSet::new();
    if !request.extensions.iter().all(|ext| seen.insert(&ext.oid)) {
        return Err(CsrError::ExtensionDuplicate);
    }
    let mut general_names: &'c [GeneralName<'c>] = &[];
    for ext in &request.extensions {
        if let Some(names) = check(ext)? {
            general_names = names;
        }
    }
    Ok(Requested { general_names })
}

/// Checks one extension; returns the SAN entries if it is the SAN extension.
fn check<'c>(ext: &'c X509Extension<'c>) -> Result<Option<&'c [GeneralName<'c>]>, CsrError> {
    let parsed = ext.parsed_extension();
    if ext.oid == OID_X509_EXT_NAME_CONSTRAINTS {
        return Err(CsrError::NameConstraintsNotAllowed);
    }
    let known = [
        OID_X509_EXT_SUBJECT_ALT_NAME,
        OID_X509_EXT_BASIC_CONSTRAINTS,
        OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_EXTENDED_KEY_USAGE,
    ];
    if !known.contains(&ext.oid) {
        // Anything else is ignored unless the client insists on it being understood.
        return if ext.critical {
            Err(CsrError::UnknownCriticalExtension)
        } else {
            Ok(None)
        };
    }
    match parsed {
        ParsedExtension::SubjectAlternativeName(san) => Ok(Some(&san.general_names)),
        ParsedExtension::BasicConstraints(bc) => check_basic_constraints(bc).map(|()| None),
        ParsedExtension::KeyUsage(ku) => check_key_usage(ku).map(|()| None),
        ParsedExtension::ExtendedKeyUsage(eku) => check_extended_key_usage(eku).map(|()| None),
        _ => Err(CsrError::ExtensionMalformed),
    }
}

fn check_basic_constraints(bc: &BasicConstraints) -> Result<(), CsrError> {
    if bc.ca || bc.path_len_constraint.is_some() {
        return Err(CsrError::CaNotAllowed);
    }
    Ok(())
}

fn check_key_usage(ku: &KeyUsage) -> Result<(), CsrError> {
    if ku.key_cert_sign() || ku.crl_sign() {
        return Err(CsrError::KeyUsageNotAllowed);
    }
    Ok(())
}

fn check_extended_key_usage(eku: &ExtendedKeyUsage<'_>) -> Result<(), CsrError> {
    let ExtendedKeyUsage {
        any,
        server_auth,
        client_auth: _,
        code_signing,
        email_protection,
        time_stamping,
        ocsp_signing,
        other,
    } = eku;
    if *any
        || *server_auth
        || *code_signing
        || *email_protection
        || *time_stamping
        || *ocsp_signing
        || !other.is_empty()
    {
        return Err(CsrError::ExtendedKeyUsageNotAllowed);
    }
    Ok(())
}

/// Number of values in a DER SET (the raw attribute value, header included).
fn set_len(raw_set: &[u8]) -> Result<usize, CsrError> {
    let (_, set) = Any::from_der(raw_set).map_err(|_| CsrError::Malformed)?;
    let mut rest = set.data;
    let mut count = 0;
    while !rest.is_empty() {
        let (next, _) = Any::from_der(rest).map_err(|_| CsrError::Malformed)?;
        rest = next;
        count += 1;
    }
    Ok(count)
}
