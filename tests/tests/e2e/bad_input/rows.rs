//! The bad-input table: one row per refused input, each an otherwise acceptable request for an
//! identity the dev policy grants the node (`spiffe://dev.mintgate.local/workload/**`, DNS
//! `*.svc.cluster.local`), so the refusal is for the one property the row names.

use mintgate_sdk::seconds;
use mintgate_tests::bad_csr::{
    FakeRsa, Mismatched, der, fixture, flip_last_byte, p256, params, pem, pem_to_der, raw_dns,
    raw_san, raw_uri, tlv, uri, with_extension,
};
use rcgen::{
    Attribute, BasicConstraints, CustomExtension, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ED25519,
};

use crate::issuance::WORKLOAD;
use names::{sans, spiffe_ids};

mod names;

/// The request id of the control certificate every table run issues first; the reuse rows send
/// other payloads under it.
pub const CONTROL_ID: &str = "control";

/// One refused request.
pub struct Row {
    pub name: &'static str,
    pub request_id: String,
    pub csr: Vec<u8>,
    pub ttl: Option<prost_types::Duration>,
    pub reason: &'static str,
}

fn row(name: &'static str, csr: Vec<u8>, reason: &'static str) -> Row {
    Row {
        name,
        request_id: name.to_owned(),
        csr,
        ttl: None,
        reason,
    }
}

/// A good P-256 CSR for the workload, PEM.
fn good() -> Vec<u8> {
    pem(&params(vec![uri(WORKLOAD)]))
}

/// A good P-256 CSR for `spiffe_id`, PEM.
fn id_csr(spiffe_id: &str) -> Vec<u8> {
    pem(&params(vec![uri(spiffe_id)]))
}

/// Every row, in the order the CSR checks run: size and framing, key, signature algorithm,
/// self-signature, extensions, SANs and SPIFFE IDs, then the request fields.
pub fn all(control_csr: &[u8]) -> Vec<Row> {
    [
        framing(),
        keys_and_signatures(),
        extensions(),
        sans(),
        spiffe_ids(),
        request_fields(control_csr),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn framing() -> Vec<Row> {
    let pem_text = String::from_utf8(good()).unwrap();
    let der_bytes = pem_to_der(pem_text.as_bytes());
    let body_start = pem_text.find('\n').unwrap() + 1;
    let mut bad_base64 = pem_text.clone().into_bytes();
    bad_base64[body_start + 5] = b'!';
    // A properly signed CSR over 16 KiB: a 17 KiB non-critical extension nobody reads.
    let padding = CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 99999, 7],
        tlv(0x04, &vec![0x41; 17 * 1024]),
    );
    vec![
        row("empty", vec![], "CSR_MALFORMED"),
        row("garbage", b"hello, CA".to_vec(), "CSR_MALFORMED"),
        row(
            "binary-garbage",
            vec![0xde, 0xad, 0xbe, 0xef],
            "CSR_MALFORMED",
        ),
        row(
            "truncated-pem",
            pem_text.as_bytes()[..pem_text.len() / 2].to_vec(),
            "CSR_MALFORMED",
        ),
        row(
            "truncated-der",
            der_bytes[..der_bytes.len() - 10].to_vec(),
            "CSR_MALFORMED",
        ),
        row(
            "pem-wrong-label",
            pem_text
                .replace("CERTIFICATE REQUEST", "CERTIFICATE")
                .into_bytes(),
            "CSR_MALFORMED",
        ),
        row("pem-bad-base64", bad_base64, "CSR_MALFORMED"),
        row(
            "der-trailing-bytes",
            [der_bytes.as_slice(), &[0x00, 0x01]].concat(),
            "CSR_TRAILING_DATA",
        ),
        row(
            "pem-trailing-text",
            format!("{pem_text}\nhello\n").into_bytes(),
            "CSR_TRAILING_DATA",
        ),
        row(
            "two-pem-csrs",
            [good(), good()].concat(),
            "CSR_TRAILING_DATA",
        ),
        row(
            "two-der-csrs",
            [der_bytes.as_slice(), &pem_to_der(&good())].concat(),
            "CSR_TRAILING_DATA",
        ),
        row(
            "over-16k-signed",
            pem(&with_extension(WORKLOAD, padding)),
            "CSR_TOO_LARGE",
        ),
        row(
            "over-16k-garbage",
            vec![b'A'; 16 * 1024 + 1],
            "CSR_TOO_LARGE",
        ),
    ]
}

fn keys_and_signatures() -> Vec<Row> {
    let good_der = der(&params(vec![uri(WORKLOAD)]), &p256());
    let mut tampered = good_der.clone();
    let name = b"rcgen self signed cert";
    let at = tampered
        .windows(name.len())
        .position(|w| w == name)
        .unwrap();
    tampered[at] = b'R';
    let (claimed, other) = (p256(), p256());
    let ed25519 = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let signed_by = |signer: &KeyPair| {
        der(
            &params(vec![uri(WORKLOAD)]),
            &Mismatched {
                claimed: &claimed,
                signer,
            },
        )
    };
    let f = |name: &str| fixture(name).to_vec();
    vec![
        row(
            "signature-byte-flipped",
            flip_last_byte(good_der),
            "CSR_SIGNATURE_INVALID",
        ),
        row(
            "rsa-signature-byte-flipped",
            flip_last_byte(pem_to_der(fixture("rsa2048-sha256"))),
            "CSR_SIGNATURE_INVALID",
        ),
        row("signed-content-changed", tampered, "CSR_SIGNATURE_INVALID"),
        row(
            "signed-by-another-key",
            signed_by(&other),
            "CSR_SIGNATURE_INVALID",
        ),
        row(
            "signed-by-another-key-type",
            signed_by(&ed25519),
            "CSR_SIGNATURE_INVALID",
        ),
        row("rsa-1024", f("rsa1024-sha256"), "RSA_KEY_SIZE_NOT_ALLOWED"),
        row("rsa-2560", f("rsa2560-sha256"), "RSA_KEY_SIZE_NOT_ALLOWED"),
        // The server must answer this at once (size before any RSA arithmetic); the row only
        // checks the reason, timed tests are not allowed.
        row(
            "rsa-16384",
            der(&params(vec![uri(WORKLOAD)]), &FakeRsa::new(16384)),
            "RSA_KEY_SIZE_NOT_ALLOWED",
        ),
        row(
            "rsa-exponent-3",
            f("rsa2048-e3-sha256"),
            "RSA_EXPONENT_NOT_ALLOWED",
        ),
        row("p-192", f("ec-prime192v1"), "KEY_TYPE_NOT_ALLOWED"),
        row("secp256k1", f("ec-secp256k1"), "KEY_TYPE_NOT_ALLOWED"),
        row(
            "brainpool-p256",
            f("ec-brainpoolP256r1"),
            "KEY_TYPE_NOT_ALLOWED",
        ),
        row("ed448", f("ed448"), "KEY_TYPE_NOT_ALLOWED"),
        row(
            "md5-with-rsa",
            f("rsa2048-md5"),
            "SIGNATURE_ALGORITHM_NOT_ALLOWED",
        ),
        row(
            "sha1-with-rsa",
            f("rsa2048-sha1"),
            "SIGNATURE_ALGORITHM_NOT_ALLOWED",
        ),
        row(
            "ecdsa-with-sha1",
            f("p256-ecdsa-sha1"),
            "SIGNATURE_ALGORITHM_NOT_ALLOWED",
        ),
    ]
}

fn extensions() -> Vec<Row> {
    let is_ca = |is_ca: IsCa| {
        let mut p = params(vec![uri(WORKLOAD)]);
        p.is_ca = is_ca;
        pem(&p)
    };
    let key_usage = |usage: KeyUsagePurpose| {
        let mut p = params(vec![uri(WORKLOAD)]);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, usage];
        pem(&p)
    };
    let eku = |name: &'static str, purpose: ExtendedKeyUsagePurpose| {
        let mut p = params(vec![uri(WORKLOAD)]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, purpose];
        row(name, pem(&p), "EXTENDED_KEY_USAGE_NOT_ALLOWED")
    };
    let critical = |oid: &[u64], content: Vec<u8>| {
        let mut ext = CustomExtension::from_oid_content(oid, content);
        ext.set_criticality(true);
        pem(&with_extension(WORKLOAD, ext))
    };
    let private_ext =
        || CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0]);
    let mut twice = params(vec![uri(WORKLOAD)]);
    twice.custom_extensions = vec![private_ext(), private_ext()];
    // A second extensionRequest attribute (with a SAN) next to the one rcgen writes.
    let second_request = Attribute {
        oid: &[1, 2, 840, 113549, 1, 9, 14],
        values: tlv(
            0x31,
            &tlv(
                0x30,
                &tlv(
                    0x30,
                    &[
                        tlv(0x06, &[0x55, 0x1d, 0x11]),
                        tlv(0x04, &tlv(0x30, &raw_uri(WORKLOAD.as_bytes()))),
                    ]
                    .concat(),
                ),
            ),
        ),
    };
    let two_requests = params(vec![uri(WORKLOAD)])
        .serialize_request_with_attributes(&p256(), vec![second_request])
        .unwrap()
        .der()
        .to_vec();
    let permitted = tlv(0x30, &tlv(0xa0, &tlv(0x30, &raw_dns(b"svc.cluster.local"))));
    vec![
        row(
            "ca-true",
            is_ca(IsCa::Ca(BasicConstraints::Unconstrained)),
            "CA_NOT_ALLOWED",
        ),
        row(
            "ca-true-pathlen-0",
            is_ca(IsCa::Ca(BasicConstraints::Constrained(0))),
            "CA_NOT_ALLOWED",
        ),
        row(
            "ca-false-with-pathlen",
            pem(&with_extension(
                WORKLOAD,
                CustomExtension::from_oid_content(&[2, 5, 29, 19], tlv(0x30, &tlv(0x02, &[3]))),
            )),
            "CA_NOT_ALLOWED",
        ),
        row(
            "key-usage-key-cert-sign",
            key_usage(KeyUsagePurpose::KeyCertSign),
            "KEY_USAGE_NOT_ALLOWED",
        ),
        row(
            "key-usage-crl-sign",
            key_usage(KeyUsagePurpose::CrlSign),
            "KEY_USAGE_NOT_ALLOWED",
        ),
        eku("eku-server-auth", ExtendedKeyUsagePurpose::ServerAuth),
        eku("eku-any", ExtendedKeyUsagePurpose::Any),
        eku("eku-code-signing", ExtendedKeyUsagePurpose::CodeSigning),
        eku(
            "eku-email-protection",
            ExtendedKeyUsagePurpose::EmailProtection,
        ),
        eku("eku-time-stamping", ExtendedKeyUsagePurpose::TimeStamping),
        eku("eku-ocsp-signing", ExtendedKeyUsagePurpose::OcspSigning),
        eku(
            "eku-private-oid",
            ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 99999, 2]),
        ),
        row(
            "name-constraints",
            pem(&with_extension(
                WORKLOAD,
                CustomExtension::from_oid_content(&[2, 5, 29, 30], permitted),
            )),
            "NAME_CONSTRAINTS_NOT_ALLOWED",
        ),
        row(
            "unknown-critical-extension",
            critical(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00]),
            "UNKNOWN_CRITICAL_EXTENSION",
        ),
        row(
            "critical-certificate-policies",
            critical(
                &[2, 5, 29, 32],
                tlv(0x30, &tlv(0x30, &tlv(0x06, &[0x55, 0x1d, 0x20, 0x00]))),
            ),
            "UNKNOWN_CRITICAL_EXTENSION",
        ),
        row(
            "duplicate-san-extension",
            pem(&with_extension(
                WORKLOAD,
                raw_san(&[raw_uri(WORKLOAD.as_bytes())]),
            )),
            "EXTENSION_DUPLICATE",
        ),
        row(
            "duplicate-private-extension",
            pem(&twice),
            "EXTENSION_DUPLICATE",
        ),
        row(
            "two-extension-requests",
            two_requests,
            "EXTENSION_DUPLICATE",
        ),
    ]
}

fn request_fields(control_csr: &[u8]) -> Vec<Row> {
    let ttl = |name: &'static str, seconds: i64, nanos: i32| Row {
        ttl: Some(prost_types::Duration { seconds, nanos }),
        ..row(name, good(), "TTL_INVALID")
    };
    let request_id = |name: &'static str, id: String| Row {
        request_id: id,
        ..row(name, good(), "REQUEST_ID_INVALID")
    };
    vec![
        ttl("ttl-zero", 0, 0),
        ttl("ttl-negative", -60, 0),
        ttl("ttl-negative-nanos", 0, -1),
        ttl("ttl-under-a-second", 0, 500_000_000),
        ttl("ttl-overflow", i64::MAX, 999_999_999),
        ttl("ttl-min", i64::MIN, 0),
        ttl("ttl-nanos-out-of-range", 60, 1_000_000_000),
        request_id("request-id-empty", String::new()),
        request_id("request-id-129-chars", "x".repeat(129)),
        request_id("request-id-space", "a b".into()),
        request_id("request-id-slash", "a/b".into()),
        request_id("request-id-non-ascii", "caf\u{e9}".into()),
        Row {
            request_id: CONTROL_ID.into(),
            ..row("reused-id-other-csr", good(), "IDEMPOTENCY_KEY_REUSED")
        },
        Row {
            request_id: CONTROL_ID.into(),
            ttl: Some(seconds(600)),
            ..row(
                "reused-id-other-ttl",
                control_csr.to_vec(),
                "IDEMPOTENCY_KEY_REUSED",
            )
        },
    ]
}
