//! Tests for the requested extensions and the SAN rules.

use std::net::{IpAddr, Ipv4Addr};

use rcgen::{
    Attribute, BasicConstraints, CustomExtension, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    OtherNameValue, SanType,
};

use super::*;

const EXTENSION_REQUEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 14];

fn with_extension(ext: CustomExtension) -> CertificateParams {
    let mut p = params(vec![uri(ID)]);
    p.custom_extensions.push(ext);
    p
}

/// Params whose only SAN extension is built from raw GeneralName TLVs.
fn raw_sans(entries: &[Vec<u8>]) -> CertificateParams {
    let mut p = params(vec![]);
    p.custom_extensions.push(raw_san(entries));
    p
}

fn raw_uri(s: &[u8]) -> Vec<u8> {
    tlv(0x86, s)
}

fn raw_dns(s: &[u8]) -> Vec<u8> {
    tlv(0x82, s)
}

// ---- extensions ----

#[test]
fn accepts_harmless_extensions() {
    let mut p = params(vec![uri(ID)]);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    // A non-critical extension we do not know is ignored (and never copied).
    p.custom_extensions.push(CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 99999, 1],
        vec![0x05, 0x00],
    ));
    let csr = validate(&der_of(&p, &p256())).unwrap();
    assert_eq!(csr.spiffe_id.as_str(), ID);
}

#[test]
fn refuses_duplicate_extensions() {
    // rcgen writes the SAN from subject_alt_names, plus this second SAN extension.
    let dup = with_extension(raw_san(&[raw_uri(ID.as_bytes())]));
    assert_eq!(refused(&dup), "EXTENSION_DUPLICATE");

    let mut twice = params(vec![uri(ID)]);
    for _ in 0..2 {
        twice
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 99999, 1],
                vec![0x05, 0x00],
            ));
    }
    assert_eq!(refused(&twice), "EXTENSION_DUPLICATE");
}

#[test]
fn refuses_a_second_extension_request() {
    let extensions = tlv(
        0x30,
        &tlv(
            0x30,
            &[
                tlv(0x06, &[0x55, 0x1d, 0x11]),
                tlv(0x04, &tlv(0x30, &raw_uri(ID.as_bytes()))),
            ]
            .concat(),
        ),
    );
    let key = p256();
    // A second extensionRequest attribute, next to the one rcgen writes.
    let attr = Attribute {
        oid: EXTENSION_REQUEST,
        values: tlv(0x31, &extensions),
    };
    let der = params(vec![uri(ID)])
        .serialize_request_with_attributes(&key, vec![attr])
        .unwrap();
    assert_eq!(reason(der.der()), "EXTENSION_DUPLICATE");
    // One extensionRequest attribute holding two values: x509-parser refuses the whole request.
    let attr = Attribute {
        oid: EXTENSION_REQUEST,
        values: tlv(0x31, &[extensions.clone(), extensions.clone()].concat()),
    };
    let der = params(vec![])
        .serialize_request_with_attributes(&key, vec![attr])
        .unwrap();
    assert_eq!(reason(der.der()), "CSR_MALFORMED");
    // The same attribute with one value is fine: the check above is about the count.
    let attr = Attribute {
        oid: EXTENSION_REQUEST,
        values: tlv(0x31, &extensions),
    };
    let der = params(vec![])
        .serialize_request_with_attributes(&key, vec![attr])
        .unwrap();
    assert!(validate(der.der()).is_ok());
}

#[test]
fn refuses_ca_requests() {
    for is_ca in [
        IsCa::Ca(BasicConstraints::Unconstrained),
        IsCa::Ca(BasicConstraints::Constrained(0)),
    ] {
        let mut p = params(vec![uri(ID)]);
        p.is_ca = is_ca;
        assert_eq!(refused(&p), "CA_NOT_ALLOWED");
    }
    // CA:FALSE (omitted) with a path length.
    let path_len = CustomExtension::from_oid_content(&[2, 5, 29, 19], tlv(0x30, &tlv(0x02, &[0])));
    assert_eq!(refused(&with_extension(path_len)), "CA_NOT_ALLOWED");
}

#[test]
fn refuses_signing_key_usages() {
    for usage in [KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign] {
        let mut p = params(vec![uri(ID)]);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, usage];
        assert_eq!(refused(&p), "KEY_USAGE_NOT_ALLOWED");
    }
}

#[test]
fn refuses_extended_key_usages_other_than_client_auth() {
    for eku in [
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::Any,
        ExtendedKeyUsagePurpose::CodeSigning,
        ExtendedKeyUsagePurpose::EmailProtection,
        ExtendedKeyUsagePurpose::TimeStamping,
        ExtendedKeyUsagePurpose::OcspSigning,
        ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 99999, 2]),
    ] {
        let mut p = params(vec![uri(ID)]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, eku.clone()];
        assert_eq!(refused(&p), "EXTENDED_KEY_USAGE_NOT_ALLOWED", "{eku:?}");
    }
}

#[test]
fn refuses_name_constraints() {
    let permitted = tlv(0x30, &tlv(0xa0, &tlv(0x30, &raw_dns(b"example.com"))));
    let nc = CustomExtension::from_oid_content(&[2, 5, 29, 30], permitted);
    assert_eq!(refused(&with_extension(nc)), "NAME_CONSTRAINTS_NOT_ALLOWED");
}

#[test]
fn refuses_unknown_critical_extensions() {
    let mut unknown =
        CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00]);
    unknown.set_criticality(true);
    assert_eq!(
        refused(&with_extension(unknown)),
        "UNKNOWN_CRITICAL_EXTENSION"
    );
    // Known to x509-parser but not part of Mintgate's profile: certificatePolicies (anyPolicy).
    let mut policies = CustomExtension::from_oid_content(
        &[2, 5, 29, 32],
        tlv(0x30, &tlv(0x30, &tlv(0x06, &[0x55, 0x1d, 0x20, 0x00]))),
    );
    policies.set_criticality(true);
    assert_eq!(
        refused(&with_extension(policies)),
        "UNKNOWN_CRITICAL_EXTENSION"
    );
}

#[test]
fn refuses_unparsable_known_extensions() {
    let garbage = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x05, 0x00]);
    assert_eq!(refused(&with_extension(garbage)), "EXTENSION_MALFORMED");
    assert_eq!(
        refused(&raw_sans(&[vec![0x04, 0x00]])),
        "EXTENSION_MALFORMED"
    );
}

// ---- SANs ----

#[test]
fn san_count_limit_is_32() {
    let mut sans = vec![uri(ID)];
    sans.extend((1..MAX_SANS).map(|i| dns(&format!("h{i}.example"))));
    let csr = validate(&der_of(&params(sans.clone()), &p256())).unwrap();
    assert_eq!(csr.dns_names.len(), MAX_SANS - 1);
    sans.push(dns("one-too-many.example"));
    assert_eq!(refused(&params(sans)), "TOO_MANY_SANS");
}

#[test]
fn requires_exactly_one_uri_san() {
    assert_eq!(refused(&params(vec![])), "URI_SAN_COUNT");
    assert_eq!(
        refused(&params(vec![dns("api.example.com")])),
        "URI_SAN_COUNT"
    );
    let two = params(vec![uri(ID), uri("spiffe://prod.example/ns/web/sa/other")]);
    assert_eq!(refused(&two), "URI_SAN_COUNT");
    let err = validate(&der_of(&two, &p256())).unwrap_err();
    assert_eq!(err, CsrError::UriSanCount { found: 2 });
}

#[test]
fn refuses_nul_and_non_ascii_bytes() {
    let cases: [(&str, Vec<Vec<u8>>); 6] = [
        (
            "NUL in URI",
            vec![raw_uri(b"spiffe://prod.example/ns/web\0/sa/api")],
        ),
        (
            "NUL in DNS",
            vec![raw_uri(ID.as_bytes()), raw_dns(b"api.example.com\0.evil")],
        ),
        (
            "UTF-8 in DNS",
            vec![
                raw_uri(ID.as_bytes()),
                raw_dns("caf\u{e9}.example".as_bytes()),
            ],
        ),
        (
            "UTF-8 in URI",
            vec![raw_uri("spiffe://prod.example/caf\u{e9}".as_bytes())],
        ),
        (
            "invalid UTF-8 in DNS",
            vec![raw_uri(ID.as_bytes()), raw_dns(b"api\xff.example")],
        ),
        (
            "NUL in email",
            vec![raw_uri(ID.as_bytes()), tlv(0x81, b"a@b\0c")],
        ),
    ];
    for (what, entries) in cases {
        assert_eq!(
            refused(&raw_sans(&entries)),
            "SAN_INVALID_CHARACTERS",
            "{what}"
        );
    }
}

#[test]
fn refuses_san_types_other_than_uri_and_dns() {
    let rid = [0x2a, 0x03, 0x04];
    let name = tlv(
        0x30,
        &tlv(
            0x31,
            &tlv(
                0x30,
                &[tlv(0x06, &[0x55, 0x04, 0x03]), tlv(0x0c, b"x")].concat(),
            ),
        ),
    );
    let raw_cases = [
        ("directoryName", tlv(0xa4, &name)),
        ("registeredID", tlv(0x88, &rid)),
    ];
    for (what, entry) in raw_cases {
        let err = validate(&der_of(
            &raw_sans(&[raw_uri(ID.as_bytes()), entry]),
            &p256(),
        ))
        .unwrap_err();
        assert_eq!(err, CsrError::SanTypeNotAllowed { kind: what });
    }
    let upn = SanType::OtherName((
        vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
        OtherNameValue::Utf8String("a@b".into()),
    ));
    for san in [
        SanType::Rfc822Name("ops@prod.example".try_into().unwrap()),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        upn,
    ] {
        let p = params(vec![uri(ID), san.clone()]);
        assert_eq!(refused(&p), "SAN_TYPE_NOT_ALLOWED", "{san:?}");
    }
}

#[test]
fn uri_must_be_a_spiffe_id_in_the_trust_domain() {
    let cases = [
        ("https://prod.example/ns/web", "SPIFFE_ID_MALFORMED"),
        ("spiffe://prod.example", "SPIFFE_ID_MALFORMED"),
        ("spiffe://other.example/ns/web", "TRUST_DOMAIN_MISMATCH"),
        ("spiffe://Prod.example/ns/web", "TRUST_DOMAIN_INVALID"),
        ("spiffe://prod.example/ns/../web", "SPIFFE_PATH_INVALID"),
        ("spiffe://prod.example/ns/web?x=1", "SPIFFE_PATH_INVALID"),
    ];
    for (id, want) in cases {
        assert_eq!(refused(&params(vec![uri(id)])), want, "{id}");
    }
    let err = validate(&der_of(
        &params(vec![uri("spiffe://other.example/a")]),
        &p256(),
    ))
    .unwrap_err();
    assert!(
        matches!(
            err,
            CsrError::SpiffeId(SpiffeIdError::ForeignTrustDomain { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn refuses_wildcards_in_uri_and_dns() {
    assert_eq!(
        refused(&params(vec![uri("spiffe://prod.example/ns/*")])),
        "WILDCARD_NOT_ALLOWED"
    );
    assert_eq!(
        refused(&params(vec![uri("spiffe://*.prod.example/ns")])),
        "WILDCARD_NOT_ALLOWED"
    );
    assert_eq!(
        refused(&params(vec![uri(ID), dns("*.example.com")])),
        "WILDCARD_NOT_ALLOWED"
    );
    assert_eq!(
        refused(&params(vec![uri(ID), dns("api.*.example.com")])),
        "WILDCARD_NOT_ALLOWED"
    );
}

#[test]
fn dns_names_must_be_ldh_host_names() {
    let label63 = "a".repeat(63);
    let long = [label63.as_str(); 4].join(".");
    for bad in [
        "",
        "-api.example.com",
        "api-.example.com",
        "a..example.com",
        ".example.com",
        "example.com.",
        "under_score.example",
        "exa mple.com",
        "api.example.com:443",
        &format!("{label63}a.example"),
        &long,
    ] {
        assert_eq!(
            refused(&params(vec![uri(ID), dns(bad)])),
            "DNS_NAME_INVALID",
            "{bad:?}"
        );
    }
    let ok = [label63.as_str(), "x-1", "EXAMPLE"].join(".");
    let csr = validate(&der_of(
        &params(vec![uri(ID), dns(&ok), dns(&ok.to_lowercase())]),
        &p256(),
    ))
    .unwrap();
    assert_eq!(
        csr.dns_names,
        [ok.to_lowercase()],
        "lower-cased and de-duplicated"
    );
}

#[test]
fn subject_dn_is_ignored() {
    let mut p = params(vec![uri(ID)]);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "spiffe://other.example/evil");
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "*.example.com");
    let csr = validate(&der_of(&p, &p256())).unwrap();
    assert_eq!(csr.spiffe_id.as_str(), ID);
    assert!(csr.dns_names.is_empty());
}
