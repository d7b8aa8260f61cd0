//! Requests are built and responses read with RustCrypto's types and the CA certificate parsed by
//! `x509-cert` (the code under test parses it with `x509-parser`); signatures are checked by ring.

use mintgate_domain::TrustDomain;
use mintgate_domain::model::RevocationReason;
use mintgate_domain::ports::{OcspEntry, OcspSpec, OcspStatus};
use ring::digest;
use time::OffsetDateTime;
use x509_cert::Certificate;
use x509_cert::der::asn1::{Null, ObjectIdentifier, OctetString};
use x509_cert::der::oid::db::rfc5912::{ECDSA_WITH_SHA_256, ID_SHA_1, ID_SHA_256, ID_SHA_384};
use x509_cert::der::oid::db::rfc6960::{ID_PKIX_OCSP_BASIC, ID_PKIX_OCSP_NONCE};
use x509_cert::der::{Any, Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspResponse, OcspResponseStatus, Request, ResponderId,
    TbsRequest, Version,
};

use super::{OcspIssuer, OcspRefusal, OcspRequest, OcspRequestError, refusal};
use crate::tests::on_both_backends;
use crate::{CertificateAuthority, KeyBackend, generate_pki};

const SERIAL: [u8; 17] = [0x5a; 17];

fn authority() -> CertificateAuthority {
    let td = TrustDomain::parse("dev.mintgate.local").unwrap();
    let pki = generate_pki(&td, OffsetDateTime::now_utc()).unwrap();
    CertificateAuthority::from_pem(&pki.ca.cert_pem, &pki.ca.key_pem, None).unwrap()
}

/// A CertID for `serial` under the CA `ca`, hashed with `hash` (`oid` names it).
fn cert_id<K: KeyBackend>(
    ca: &CertificateAuthority<K>,
    hash: &'static digest::Algorithm,
    oid: ObjectIdentifier,
    serial: SerialNumber,
) -> CertId {
    let cert = Certificate::from_der(ca.ca_cert_der()).unwrap();
    let tbs = cert.tbs_certificate;
    let name = tbs.subject.to_der().unwrap();
    let key = tbs.subject_public_key_info.subject_public_key.raw_bytes();
    CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid,
            parameters: Some(Any::from(Null)),
        },
        issuer_name_hash: OctetString::new(digest::digest(hash, &name).as_ref()).unwrap(),
        issuer_key_hash: OctetString::new(digest::digest(hash, key).as_ref()).unwrap(),
        serial_number: serial,
    }
}

fn sha1_id<K: KeyBackend>(ca: &CertificateAuthority<K>, serial: &[u8]) -> CertId {
    let serial = SerialNumber::new(serial).unwrap();
    cert_id(ca, &digest::SHA1_FOR_LEGACY_USE_ONLY, ID_SHA_1, serial)
}

/// A DER OCSPRequest for `ids`, with `nonce` (the extnValue) if given.
fn request(ids: Vec<CertId>, nonce: Option<Vec<u8>>) -> Vec<u8> {
    let request_extensions = nonce.map(|value| {
        vec![Extension {
            extn_id: ID_PKIX_OCSP_NONCE,
            critical: false,
            extn_value: OctetString::new(value).unwrap(),
        }]
    });
    x509_ocsp::OcspRequest {
        tbs_request: TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: ids
                .into_iter()
                .map(|req_cert| Request {
                    req_cert,
                    single_request_extensions: None,
                })
                .collect(),
            request_extensions,
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap()
}

/// A nonce extnValue: the DER OCTET STRING of `len` octets.
fn nonce(len: usize) -> Vec<u8> {
    OctetString::new(vec![7; len]).unwrap().to_der().unwrap()
}

#[test]
fn a_cert_id_names_the_ca_by_its_sha1_or_sha256_hashes_only() {
    let ca = authority();
    let issuer = OcspIssuer::from_certificate(ca.ca_cert_der()).unwrap();
    let serial = || SerialNumber::new(&SERIAL).unwrap();
    let sha256 = cert_id(&ca, &digest::SHA256, ID_SHA_256, serial());
    let sha384 = cert_id(&ca, &digest::SHA384, ID_SHA_384, serial());
    let other = sha1_id(&authority(), &SERIAL);
    let der = request(vec![sha1_id(&ca, &SERIAL), sha256, sha384, other], None);
    let parsed = OcspRequest::from_der(&der).unwrap();
    let found: Vec<_> = parsed.certs.iter().map(|c| issuer.serial_of(c)).collect();
    let ours = mintgate_domain::Serial::from_der_bytes(&SERIAL).unwrap();
    assert_eq!(found, [Some(ours.clone()), Some(ours), None, None]);
    // Each CertID is kept as it was asked, to be answered as asked.
    let ids = x509_ocsp::OcspRequest::from_der(&der).unwrap().tbs_request;
    for (cert, asked) in parsed.certs.iter().zip(ids.request_list) {
        assert_eq!(cert.cert_id_der(), asked.req_cert.to_der().unwrap());
    }
}

#[test]
fn a_serial_mintgate_cannot_have_issued_is_not_looked_up() {
    let ca = authority();
    let issuer = OcspIssuer::from_certificate(ca.ca_cert_der()).unwrap();
    // A negative INTEGER (-1) and zero.
    let negative = SerialNumber::from_der(&[0x02, 0x01, 0xff]).unwrap();
    let zero = SerialNumber::from_der(&[0x02, 0x01, 0x00]).unwrap();
    for serial in [negative, zero] {
        let id = cert_id(&ca, &digest::SHA1_FOR_LEGACY_USE_ONLY, ID_SHA_1, serial);
        let parsed = OcspRequest::from_der(&request(vec![id], None)).unwrap();
        assert!(issuer.names(&parsed.certs[0]));
        assert_eq!(issuer.serial_of(&parsed.certs[0]), None);
    }
}

#[test]
fn malformed_requests_are_refused() {
    let ca = authority();
    let good = request(vec![sha1_id(&ca, &SERIAL)], Some(nonce(16)));
    assert!(OcspRequest::from_der(&good).is_ok());
    let mut trailing = good.clone();
    trailing.push(0);
    let cases: [(&str, Vec<u8>); 5] = [
        ("garbage", b"not DER".to_vec()),
        ("trailing octets", trailing),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("no CertID", request(vec![], None)),
        (
            "empty nonce",
            request(vec![sha1_id(&ca, &SERIAL)], Some(nonce(0))),
        ),
    ];
    for (what, der) in cases {
        assert!(OcspRequest::from_der(&der).is_err(), "{what}");
    }
    let long = request(vec![sha1_id(&ca, &SERIAL)], Some(nonce(33)));
    assert!(matches!(
        OcspRequest::from_der(&long),
        Err(OcspRequestError::Nonce { len: 33 })
    ));
    // 32 octets is the most RFC 8954 allows; a bare nonce (no OCTET STRING) is taken as is.
    for value in [nonce(32), vec![1, 2, 3]] {
        let der = request(vec![sha1_id(&ca, &SERIAL)], Some(value.clone()));
        assert_eq!(OcspRequest::from_der(&der).unwrap().nonce, Some(value));
    }
}

#[test]
fn refusals_carry_only_their_status() {
    for (refused, code) in [
        (OcspRefusal::MalformedRequest, 1),
        (OcspRefusal::InternalError, 2),
        (OcspRefusal::TryLater, 3),
        (OcspRefusal::Unauthorized, 6),
    ] {
        assert_eq!(refusal(refused), [0x30, 0x03, 0x0a, 0x01, code]);
    }
}

on_both_backends!(
    signed_response,
    a_signed_response_verifies_with_the_ca_key_and_answers_as_asked,
    None
);

fn a_signed_response_verifies_with_the_ca_key_and_answers_as_asked<K: KeyBackend>(
    ca: &CertificateAuthority<K>,
) {
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let revoked_at = now - time::Duration::minutes(3);
    let ids = [1u8, 2, 3, 4].map(|n| sha1_id(ca, &[n]).to_der().unwrap());
    let entry = |cert_id: &Vec<u8>, status| OcspEntry {
        cert_id: cert_id.clone(),
        status,
        this_update: now,
        next_update: now + time::Duration::minutes(5),
    };
    let revoked = |reason| OcspStatus::Revoked { revoked_at, reason };
    let entries = [
        entry(&ids[0], OcspStatus::Good),
        entry(&ids[1], revoked(RevocationReason::KeyCompromise)),
        entry(&ids[2], revoked(RevocationReason::Unspecified)),
        entry(&ids[3], OcspStatus::Unknown),
    ];
    let echoed = nonce(16);
    let der = ca
        .ocsp(&OcspSpec {
            issuer_key_id: "",
            produced_at: now,
            responses: &entries,
            nonce: Some(&echoed),
        })
        .unwrap();

    let response = OcspResponse::from_der(&der).unwrap();
    assert_eq!(response.response_status, OcspResponseStatus::Successful);
    let bytes = response.response_bytes.unwrap();
    assert_eq!(bytes.response_type, ID_PKIX_OCSP_BASIC);
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).unwrap();
    assert_eq!(basic.signature_algorithm.oid, ECDSA_WITH_SHA_256);
    assert_eq!(basic.signature_algorithm.parameters, None);
    assert_eq!(basic.certs, None);
    let cert = Certificate::from_der(ca.ca_cert_der()).unwrap();
    let key = cert
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key;
    let key = key.raw_bytes();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
        .verify(
            &basic.tbs_response_data.to_der().unwrap(),
            basic.signature.raw_bytes(),
        )
        .unwrap();

    let data = basic.tbs_response_data;
    let key_hash = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, key);
    assert_eq!(
        data.responder_id,
        ResponderId::ByKey(OctetString::new(key_hash.as_ref()).unwrap())
    );
    let seconds = |t: x509_ocsp::OcspGeneralizedTime| t.0.to_unix_duration().as_secs();
    assert_eq!(seconds(data.produced_at), 1_800_000_000);
    let statuses: Vec<CertStatus> = data.responses.iter().map(|r| r.cert_status).collect();
    let CertStatus::Revoked(key_compromise) = statuses[1] else {
        panic!("{statuses:?}")
    };
    assert_eq!(
        key_compromise.revocation_reason,
        Some(CrlReason::KeyCompromise)
    );
    assert_eq!(seconds(key_compromise.revocation_time), 1_800_000_000 - 180);
    let CertStatus::Revoked(unspecified) = statuses[2] else {
        panic!("{statuses:?}")
    };
    assert_eq!(unspecified.revocation_reason, None);
    assert_eq!(statuses[0], CertStatus::good());
    assert_eq!(statuses[3], CertStatus::unknown());
    for (single, asked) in data.responses.iter().zip(&ids) {
        assert_eq!(&single.cert_id.to_der().unwrap(), asked);
        assert_eq!(seconds(single.this_update), 1_800_000_000);
        assert_eq!(seconds(single.next_update.unwrap()), 1_800_000_300);
    }
    let extensions = data.response_extensions.unwrap();
    assert_eq!(extensions.len(), 1);
    assert_eq!(extensions[0].extn_id, ID_PKIX_OCSP_NONCE);
    assert_eq!(extensions[0].extn_value.as_bytes(), echoed);
}

#[test]
fn without_a_nonce_the_response_has_no_extensions() {
    let ca = authority();
    let now = OffsetDateTime::now_utc();
    let entries = [OcspEntry {
        cert_id: sha1_id(&ca, &SERIAL).to_der().unwrap(),
        status: OcspStatus::Good,
        this_update: now,
        next_update: now,
    }];
    let der = ca
        .ocsp(&OcspSpec {
            issuer_key_id: "",
            produced_at: now,
            responses: &entries,
            nonce: None,
        })
        .unwrap();
    let bytes = OcspResponse::from_der(&der)
        .unwrap()
        .response_bytes
        .unwrap();
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).unwrap();
    assert_eq!(basic.tbs_response_data.response_extensions, None);
}

proptest::proptest! {
    /// Whatever arrives, reading it never panics, and a cut or extended request never passes.
    #[test]
    fn reading_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = OcspRequest::from_der(&bytes);
    }

    #[test]
    fn a_request_cut_short_or_extended_is_refused(cut in 1usize..64, extra in proptest::collection::vec(proptest::num::u8::ANY, 1..8)) {
        let ca = shared_authority();
        let der = request(vec![sha1_id(ca, &SERIAL)], Some(nonce(16)));
        let cut = cut.min(der.len());
        proptest::prop_assert!(OcspRequest::from_der(&der[..der.len() - cut]).is_err());
        let mut longer = der.clone();
        longer.extend(extra);
        proptest::prop_assert!(OcspRequest::from_der(&longer).is_err());
    }
}

/// One CA for every proptest case (generating one per case would dominate the run).
fn shared_authority() -> &'static CertificateAuthority {
    static CA: std::sync::OnceLock<CertificateAuthority> = std::sync::OnceLock::new();
    CA.get_or_init(authority)
}
