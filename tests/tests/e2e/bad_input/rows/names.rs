//! Rows about names: the SAN entries a CSR may carry and the SPIFFE ID rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mintgate_tests::bad_csr::{dns, params, pem, raw_dns, raw_email, raw_sans, raw_uri, tlv, uri};
use rcgen::{OtherNameValue, SanType};

use super::{Row, id_csr, row};
use crate::issuance::WORKLOAD;

pub(super) fn sans() -> Vec<Row> {
    let uri_ok = || raw_uri(WORKLOAD.as_bytes());
    let with_san = |san: SanType| pem(&params(vec![uri(WORKLOAD), san]));
    let mut many = vec![uri(WORKLOAD)];
    many.extend((0..32).map(|i| dns(&format!("w{i}.svc.cluster.local"))));
    let upn = SanType::OtherName((
        vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
        OtherNameValue::Utf8String("web@dev.mintgate.local".into()),
    ));
    let directory_name = tlv(
        0xa4,
        &tlv(
            0x30,
            &tlv(
                0x31,
                &tlv(
                    0x30,
                    &[tlv(0x06, &[0x55, 0x04, 0x03]), tlv(0x0c, b"web")].concat(),
                ),
            ),
        ),
    );
    let invalid = "SAN_INVALID_CHARACTERS";
    let not_allowed = "SAN_TYPE_NOT_ALLOWED";
    vec![
        row("no-san", pem(&params(vec![])), "URI_SAN_COUNT"),
        row(
            "dns-san-only",
            pem(&params(vec![dns("web.svc.cluster.local")])),
            "URI_SAN_COUNT",
        ),
        row(
            "two-uri-sans",
            pem(&params(vec![
                uri(WORKLOAD),
                uri("spiffe://dev.mintgate.local/workload/db"),
            ])),
            "URI_SAN_COUNT",
        ),
        row("33-sans", pem(&params(many)), "TOO_MANY_SANS"),
        row(
            "nul-in-uri",
            pem(&raw_sans(&[raw_uri(
                b"spiffe://dev.mintgate.local/workload/web\0",
            )])),
            invalid,
        ),
        row(
            "non-ascii-in-uri",
            pem(&raw_sans(&[raw_uri(
                "spiffe://dev.mintgate.local/workload/w\u{e9}b".as_bytes(),
            )])),
            invalid,
        ),
        row(
            "invalid-utf8-in-uri",
            pem(&raw_sans(&[raw_uri(
                b"spiffe://dev.mintgate.local/workload/w\xffb",
            )])),
            invalid,
        ),
        row(
            "nul-in-dns",
            pem(&raw_sans(&[
                uri_ok(),
                raw_dns(b"web.svc.cluster.local\0.evil"),
            ])),
            invalid,
        ),
        row(
            "non-ascii-in-dns",
            pem(&raw_sans(&[
                uri_ok(),
                raw_dns("w\u{e9}b.svc.cluster.local".as_bytes()),
            ])),
            invalid,
        ),
        row(
            "invalid-utf8-in-dns",
            pem(&raw_sans(&[uri_ok(), raw_dns(b"w\xffb.svc.cluster.local")])),
            invalid,
        ),
        row(
            "nul-in-email",
            pem(&raw_sans(&[
                uri_ok(),
                raw_email(b"web@dev.mintgate.local\0"),
            ])),
            invalid,
        ),
        row(
            "email-san",
            with_san(SanType::Rfc822Name(
                "web@dev.mintgate.local".try_into().unwrap(),
            )),
            not_allowed,
        ),
        row("other-name-san", with_san(upn), not_allowed),
        row(
            "ipv4-san",
            with_san(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))),
            not_allowed,
        ),
        row(
            "ipv6-san",
            with_san(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST))),
            not_allowed,
        ),
        row(
            "directory-name-san",
            pem(&raw_sans(&[uri_ok(), directory_name])),
            not_allowed,
        ),
        row(
            "registered-id-san",
            pem(&raw_sans(&[uri_ok(), tlv(0x88, &[0x2a, 0x03, 0x04])])),
            not_allowed,
        ),
        row(
            "wildcard-dns",
            with_san(dns("*.svc.cluster.local")),
            "WILDCARD_NOT_ALLOWED",
        ),
        row(
            "wildcard-dns-inner-label",
            with_san(dns("web.*.cluster.local")),
            "WILDCARD_NOT_ALLOWED",
        ),
        row(
            "wildcard-uri-path",
            id_csr("spiffe://dev.mintgate.local/workload/*"),
            "WILDCARD_NOT_ALLOWED",
        ),
        row(
            "wildcard-uri-trust-domain",
            id_csr("spiffe://*.mintgate.local/workload/web"),
            "WILDCARD_NOT_ALLOWED",
        ),
        row(
            "dns-underscore",
            with_san(dns("web_1.svc.cluster.local")),
            "DNS_NAME_INVALID",
        ),
        row(
            "dns-trailing-dot",
            with_san(dns("web.svc.cluster.local.")),
            "DNS_NAME_INVALID",
        ),
    ]
}

pub(super) fn spiffe_ids() -> Vec<Row> {
    let path = |name: &'static str, id: &str| row(name, id_csr(id), "SPIFFE_PATH_INVALID");
    let domain = |name: &'static str, id: &str| row(name, id_csr(id), "TRUST_DOMAIN_INVALID");
    let base = "spiffe://dev.mintgate.local/workload/";
    let too_long = format!("{base}{}", "a".repeat(2049 - base.len()));
    assert_eq!(too_long.len(), 2049);
    vec![
        path(
            "path-dot-dot",
            "spiffe://dev.mintgate.local/workload/../web",
        ),
        path("path-dot", "spiffe://dev.mintgate.local/workload/./web"),
        path(
            "path-double-slash",
            "spiffe://dev.mintgate.local/workload//web",
        ),
        path(
            "path-trailing-slash",
            "spiffe://dev.mintgate.local/workload/web/",
        ),
        path(
            "path-percent-escape",
            "spiffe://dev.mintgate.local/workload/w%65b",
        ),
        path(
            "path-percent-dot-dot",
            "spiffe://dev.mintgate.local/workload/%2e%2e/web",
        ),
        path("path-plus", "spiffe://dev.mintgate.local/workload/web+1"),
        path("path-tilde", "spiffe://dev.mintgate.local/workload/web~1"),
        path("path-at", "spiffe://dev.mintgate.local/workload/web@1"),
        path("path-colon", "spiffe://dev.mintgate.local/workload/web:1"),
        path("path-space", "spiffe://dev.mintgate.local/workload/we b"),
        path("path-query", "spiffe://dev.mintgate.local/workload/web?x=1"),
        path(
            "path-fragment",
            "spiffe://dev.mintgate.local/workload/web#f",
        ),
        domain(
            "domain-uppercase",
            "spiffe://Dev.Mintgate.local/workload/web",
        ),
        domain(
            "domain-userinfo",
            "spiffe://user@dev.mintgate.local/workload/web",
        ),
        domain(
            "domain-userinfo-password",
            "spiffe://user:pw@dev.mintgate.local/workload/web",
        ),
        domain(
            "domain-port",
            "spiffe://dev.mintgate.local:8443/workload/web",
        ),
        domain(
            "domain-query",
            "spiffe://dev.mintgate.local?x=1/workload/web",
        ),
        domain(
            "domain-fragment",
            "spiffe://dev.mintgate.local#f/workload/web",
        ),
        domain("domain-empty", "spiffe:///workload/web"),
        row(
            "id-over-2048-bytes",
            id_csr(&too_long),
            "SPIFFE_ID_TOO_LONG",
        ),
        row(
            "id-not-spiffe",
            id_csr("https://dev.mintgate.local/workload/web"),
            "SPIFFE_ID_MALFORMED",
        ),
        row(
            "id-without-path",
            id_csr("spiffe://dev.mintgate.local"),
            "SPIFFE_ID_MALFORMED",
        ),
        row(
            "id-foreign-trust-domain",
            id_csr("spiffe://other.example/workload/web"),
            "TRUST_DOMAIN_MISMATCH",
        ),
    ]
}
