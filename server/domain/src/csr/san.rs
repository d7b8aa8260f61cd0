//! Subject alternative names: exactly one URI that is a SPIFFE ID in the expected trust domain,
//! optionally DNS names (LDH host names, lower-cased), nothing else, no wildcards, no NUL or
//! non-ASCII bytes anywhere.

use x509_parser::extensions::GeneralName;

use super::{CsrError, MAX_SANS};
use crate::{SpiffeId, TrustDomain};

/// Longest DNS name in presentation form without a trailing dot (RFC 1035).
const MAX_DNS_NAME_LEN: usize = 253;
const MAX_DNS_LABEL_LEN: usize = 63;
/// Context tags of the IA5String GeneralName choices: rfc822Name, dNSName, uniformResourceIdentifier.
const IA5_TAGS: [u32; 3] = [1, 2, 6];

/// The names issuance may use.
pub(super) struct Names {
    pub spiffe_id: SpiffeId,
    pub dns_names: Vec<String>,
}

/// Validates the SAN entries of a CSR.
pub(super) fn validate(
    names: &[GeneralName<'_>],
    trust_domain: &TrustDomain,
) -> Result<Names, CsrError> {
    if names.len() > MAX_SANS {
        return Err(CsrError::TooManySans { max: MAX_SANS });
    }
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    for name in names {
        match name {
            GeneralName::URI(uri) => {
                check_bytes(uri.as_bytes())?;
                uris.push(*uri);
            }
            GeneralName::DNSName(host) => {
                check_bytes(host.as_bytes())?;
                dns.push(*host);
            }
            GeneralName::RFC822Name(email) => {
                check_bytes(email.as_bytes())?;
                return Err(CsrError::SanTypeNotAllowed { kind: "email" });
            }
            // x509-parser keeps IA5 names that are not UTF-8 as Invalid: their bytes are non-ASCII.
            GeneralName::Invalid(tag, raw) if IA5_TAGS.contains(&tag.0) => {
                check_bytes(raw)?;
                return Err(CsrError::ExtensionMalformed);
            }
            other => return Err(CsrError::SanTypeNotAllowed { kind: kind(other) }),
        }
    }

    let [uri] = uris[..] else {
        return Err(CsrError::UriSanCount { found: uris.len() });
    };
    if uri.contains('*') {
        return Err(CsrError::WildcardNotAllowed);
    }
    let spiffe_id = SpiffeId::parse_in(uri, trust_domain).map_err(CsrError::SpiffeId)?;

    let mut dns_names: Vec<String> = Vec::with_capacity(dns.len());
    for host in dns {
        let host = normalize_dns_name(host)?;
        if !dns_names.contains(&host) {
            dns_names.push(host);
        }
    }
    Ok(Names {
        spiffe_id,
        dns_names,
    })
}

/// Refuses NUL and non-ASCII bytes, judged on the raw bytes of the name.
fn check_bytes(raw: &[u8]) -> Result<(), CsrError> {
    if raw.iter().any(|b| *b == 0 || !b.is_ascii()) {
        return Err(CsrError::SanInvalidCharacters);
    }
    Ok(())
}

/// Checks an LDH host name (no trailing dot, no underscore, no wildcard) and lower-cases it.
fn normalize_dns_name(host: &str) -> Result<String, CsrError> {
    if host.contains('*') {
        return Err(CsrError::WildcardNotAllowed);
    }
    if host.is_empty() || host.len() > MAX_DNS_NAME_LEN {
        return Err(CsrError::DnsNameInvalid);
    }
    let ldh_label = |label: &str| {
        !label.is_empty()
            && label.len() <= MAX_DNS_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !host.split('.').all(ldh_label) {
        return Err(CsrError::DnsNameInvalid);
    }
    Ok(host.to_ascii_lowercase())
}

fn kind(name: &GeneralName<'_>) -> &'static str {
    match name {
        GeneralName::OtherName(..) => "otherName",
        GeneralName::RFC822Name(_) => "email",
        GeneralName::DNSName(_) => "dNSName",
        GeneralName::X400Address(_) => "x400Address",
        GeneralName::DirectoryName(_) => "directoryName",
        GeneralName::EDIPartyName(_) => "ediPartyName",
        GeneralName::URI(_) => "URI",
        GeneralName::IPAddress(_) => "iPAddress",
        GeneralName::RegisteredID(_) => "registeredID",
        GeneralName::Invalid(..) => "unknown",
    }
}
