//! Tests for CSR validation: framing, key types, signature algorithms and proof of possession
//! here; requested extensions and SANs in `tests/names.rs`.
//!
//! CSRs are made with rcgen (P-256, P-384, Ed25519, RSA via the `rsa` crate) or, for what rcgen
//! cannot make, read from the openssl fixtures in `tests/fixtures/csr/` (see `make.sh` there).

mod names;

use std::sync::OnceLock;

use rcgen::{
    CertificateParams, CustomExtension, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    PKCS_ED25519, PKCS_RSA_SHA256, PublicKeyData, SanType, SignatureAlgorithm, SigningKey,
};
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::EncodePrivateKey;
use rsa::rand_core::OsRng;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::{BigUint, RsaPrivateKey};
use rustls_pki_types::PrivatePkcs8KeyDer;

use super::*;

pub(super) const ID: &str = "spiffe://prod.example/ns/web/sa/api";

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../tests/fixtures/csr/", $name, ".pem")).as_slice()
    };
}

// ---- helpers shared with tests/names.rs ----

pub(super) fn td() -> TrustDomain {
    TrustDomain::parse("prod.example").unwrap()
}

pub(super) fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

pub(super) fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

/// Params with the given SANs and nothing else requested.
pub(super) fn params(sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params
}

pub(super) fn p256() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

pub(super) fn der_of(params: &CertificateParams, key: &impl SigningKey) -> Vec<u8> {
    params.serialize_request(key).unwrap().der().to_vec()
}

pub(super) fn validate(input: &[u8]) -> Result<ValidatedCsr, CsrError> {
    validate_csr(input, &td())
}

/// The reason a CSR is refused; fails the test if it is accepted.
pub(super) fn reason(input: &[u8]) -> &'static str {
    validate(input).expect_err("CSR should be refused").reason()
}

/// The reason a P-256 CSR made from `params` is refused.
pub(super) fn refused(params: &CertificateParams) -> &'static str {
    reason(&der_of(params, &p256()))
}

/// A DER TLV with a short or two-byte long-form length.
pub(super) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    match len {
        0..0x80 => out.push(len as u8),
        0x80..0x100 => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// A subjectAltName extension built from raw GeneralName TLVs (to put any byte into a SAN).
pub(super) fn raw_san(entries: &[Vec<u8>]) -> CustomExtension {
    CustomExtension::from_oid_content(&[2, 5, 29, 17], tlv(0x30, &entries.concat()))
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem).unwrap().1.contents
}

fn flip_last_byte(mut der: Vec<u8>) -> Vec<u8> {
    // The signature BIT STRING is the last element of a CertificationRequest.
    *der.last_mut().unwrap() ^= 0x01;
    der
}

// ---- RSA keys: generated once per test binary, generation is slow ----

fn rsa_key(bits: usize, exponent: u64) -> &'static RsaPrivateKey {
    static KEYS: [OnceLock<RsaPrivateKey>; 5] = [const { OnceLock::new() }; 5];
    let slot = match (bits, exponent) {
        (2048, 65537) => 0,
        (3072, 65537) => 1,
        (4096, 65537) => 2,
        (1024, 65537) => 3,
        (2048, 3) => 4,
        other => panic!("no cached RSA key for {other:?}"),
    };
    KEYS[slot].get_or_init(|| {
        RsaPrivateKey::new_with_exp(&mut OsRng, bits, &BigUint::from(exponent)).unwrap()
    })
}

/// An rcgen (ring) key pair for an allowed RSA key.
fn rcgen_rsa(bits: usize) -> KeyPair {
    let pkcs8 = rsa_key(bits, 65537).to_pkcs8_der().unwrap();
    let der = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_RSA_SHA256).unwrap()
}

/// Signs with the `rsa` crate (PKCS#1 v1.5, SHA-256), for keys ring refuses to sign with
/// (1024 bits, e = 3).
struct RsaSigner {
    key: rsa::pkcs1v15::SigningKey<rsa::sha2::Sha256>,
    public_pkcs1: Vec<u8>,
}

impl RsaSigner {
    fn new(key: &RsaPrivateKey) -> Self {
        let public_pkcs1 = key
            .to_public_key()
            .to_pkcs1_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        Self {
            key: rsa::pkcs1v15::SigningKey::new(key.clone()),
            public_pkcs1,
        }
    }
}

impl PublicKeyData for RsaSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.public_pkcs1
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_RSA_SHA256
    }
}

impl SigningKey for RsaSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.key.sign(msg).to_vec())
    }
}

/// Claims one key's public key but signs with another: no proof of possession.
struct Mismatched<'a> {
    claimed: &'a KeyPair,
    signer: &'a KeyPair,
}

impl PublicKeyData for Mismatched<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.claimed.der_bytes()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.claimed.algorithm()
    }
}

impl SigningKey for Mismatched<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.signer.sign(msg)
    }
}

/// A key whose encoded public key is whatever the test says; its signature is junk.
struct RawKey {
    alg: &'static SignatureAlgorithm,
    public: Vec<u8>,
}

impl PublicKeyData for RawKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl SigningKey for RawKey {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(vec![0x42; 64])
    }
}

// ---- acceptance ----

fn assert_accepted(key: &impl SigningKey, want: KeyType) {
    let params = params(vec![uri(ID), dns("API.Example.com"), dns("localhost")]);
    let csr = validate(&der_of(&params, key)).unwrap();
    assert_eq!(csr.key_type, want);
    assert_eq!(csr.spiffe_id.as_str(), ID);
    assert_eq!(csr.dns_names, ["api.example.com", "localhost"]);
    assert_eq!(csr.spki_der, key.subject_public_key_info());
}

#[test]
fn accepts_p256() {
    assert_accepted(&p256(), KeyType::EcdsaP256);
}

#[test]
fn accepts_p384() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    assert_accepted(&key, KeyType::EcdsaP384);
}

#[test]
fn accepts_ed25519() {
    let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    assert_accepted(&key, KeyType::Ed25519);
}

#[test]
fn accepts_rsa_2048() {
    assert_accepted(&rcgen_rsa(2048), KeyType::Rsa2048);
}

#[test]
fn accepts_rsa_3072() {
    assert_accepted(&rcgen_rsa(3072), KeyType::Rsa3072);
}

#[test]
fn accepts_rsa_4096() {
    assert_accepted(&rcgen_rsa(4096), KeyType::Rsa4096);
}

#[test]
fn accepts_rsa_signed_by_the_rsa_crate() {
    // The signer the 1024-bit and e = 3 tests use works: those are refused for their key alone.
    assert_accepted(&RsaSigner::new(rsa_key(2048, 65537)), KeyType::Rsa2048);
}

#[test]
fn accepts_openssl_controls() {
    let csr = validate(fixture!("rsa2048-sha256")).unwrap();
    assert_eq!(csr.key_type, KeyType::Rsa2048);
    assert_eq!(
        csr.spiffe_id.as_str(),
        "spiffe://prod.example/ns/test/sa/fixture"
    );
    assert!(csr.dns_names.is_empty());
    let csr = validate(fixture!("p256-sha256")).unwrap();
    assert_eq!(csr.key_type, KeyType::EcdsaP256);
}

// ---- size and framing ----

fn p256_pem() -> String {
    params(vec![uri(ID)])
        .serialize_request(&p256())
        .unwrap()
        .pem()
        .unwrap()
}

#[test]
fn size_is_checked_before_anything_else() {
    let pem = p256_pem();
    let mut padded = pem.clone().into_bytes();
    padded.resize(MAX_CSR_BYTES, b'\n');
    assert!(
        validate(&padded).is_ok(),
        "exactly {MAX_CSR_BYTES} bytes is allowed"
    );
    padded.push(b'\n');
    assert_eq!(
        validate(&padded),
        Err(CsrError::TooLarge { max: MAX_CSR_BYTES })
    );
    assert_eq!(reason(&padded), "CSR_TOO_LARGE");
    assert_eq!(reason(&[0xff; MAX_CSR_BYTES + 1]), "CSR_TOO_LARGE");
}

#[test]
fn accepts_der_pem_legacy_label_and_surrounding_whitespace() {
    let key = p256();
    let csr = params(vec![uri(ID)]).serialize_request(&key).unwrap();
    let pem = csr.pem().unwrap();
    assert!(validate(csr.der()).is_ok());
    assert!(validate(pem.as_bytes()).is_ok());
    let legacy = pem.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
    assert!(validate(legacy.as_bytes()).is_ok());
    let crlf = format!(" \r\n\t{}\r\n\r\n  ", pem.replace('\n', "\r\n"));
    assert!(validate(crlf.as_bytes()).is_ok());
}

#[test]
fn refuses_garbage_and_truncation_as_malformed() {
    let pem = p256_pem();
    let der = pem_to_der(pem.as_bytes());
    let body_start = pem.find('\n').unwrap() + 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("whitespace", b" \n\t ".to_vec()),
        ("garbage", b"hello, CA".to_vec()),
        ("binary garbage", vec![0xde, 0xad, 0xbe, 0xef]),
        ("truncated DER", der[..der.len() - 10].to_vec()),
        ("DER sequence only", vec![0x30, 0x00]),
        (
            "PEM without END",
            pem[..pem.find("-----END").unwrap()].into(),
        ),
        ("PEM cut mid-body", pem[..body_start + 20].into()),
        ("text before PEM", format!("csr:\n{pem}").into()),
        (
            "wrong label",
            pem.replace("CERTIFICATE REQUEST", "CERTIFICATE").into(),
        ),
        (
            "END label differs",
            pem.replacen("BEGIN CERTIFICATE", "BEGIN NEW CERTIFICATE", 1)
                .into(),
        ),
        ("bad base64", {
            let mut p = pem.clone().into_bytes();
            p[body_start + 5] = b'!';
            p
        }),
        (
            "PEM header line",
            pem.replacen('\n', "\nProc-Type: 4,ENCRYPTED\n", 1).into(),
        ),
        (
            "empty PEM",
            b"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n".to_vec(),
        ),
    ];
    for (what, input) in cases {
        assert_eq!(validate(&input), Err(CsrError::Malformed), "{what}");
    }
}

#[test]
fn refuses_trailing_data_and_two_csrs() {
    let pem = p256_pem();
    let der = pem_to_der(pem.as_bytes());
    let two = format!("{pem}{}", p256_pem());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("DER + byte", [der.as_slice(), &[0]].concat()),
        ("DER + newline", [der.as_slice(), b"\n"].concat()),
        ("DER + DER", [der.as_slice(), &der].concat()),
        ("two PEM CSRs", two.into_bytes()),
        ("PEM + text", format!("{pem}\nhello\n").into_bytes()),
        ("PEM + DER bytes", [pem.as_bytes(), &der].concat()),
    ];
    for (what, input) in cases {
        assert_eq!(reason(&input), "CSR_TRAILING_DATA", "{what}");
    }
    // Trailing bytes inside the PEM body (after the DER) are refused too.
    let padded_der = [der.as_slice(), &[0, 0]].concat();
    assert_eq!(reason(&padded_der), "CSR_TRAILING_DATA");
}

// ---- key types ----

#[test]
fn refuses_key_types_outside_the_profile() {
    let cases = [
        ("P-192", fixture!("ec-prime192v1")),
        ("P-521", fixture!("ec-P-521")),
        ("secp256k1", fixture!("ec-secp256k1")),
        ("brainpoolP256r1", fixture!("ec-brainpoolP256r1")),
        ("Ed448", fixture!("ed448")),
        ("DSA", fixture!("dsa2048")),
        ("RSA-PSS key", fixture!("rsa-pss-key")),
    ];
    for (what, pem) in cases {
        assert_eq!(validate(pem), Err(CsrError::KeyTypeNotAllowed), "{what}");
        assert_eq!(reason(pem), "KEY_TYPE_NOT_ALLOWED");
    }
}

#[test]
fn refuses_small_rsa_keys() {
    let der = der_of(
        &params(vec![uri(ID)]),
        &RsaSigner::new(rsa_key(1024, 65537)),
    );
    assert_eq!(
        validate(&der),
        Err(CsrError::RsaKeySizeNotAllowed { bits: 1024 })
    );
    assert_eq!(reason(&der), "RSA_KEY_SIZE_NOT_ALLOWED");
}

/// Claims a 16384-bit RSA public key (a made-up odd modulus, e = 65537) and signs with junk:
/// generating a real key of that size takes minutes, and the size is judged before the signature.
struct Huge16384 {
    public_pkcs1: Vec<u8>,
}

impl Huge16384 {
    fn new() -> Self {
        let mut modulus = vec![0xC5_u8; 16384 / 8];
        modulus.insert(0, 0x00); // positive INTEGER
        let public_pkcs1 = tlv(
            0x30,
            &[tlv(0x02, &modulus), tlv(0x02, &[0x01, 0x00, 0x01])].concat(),
        );
        Self { public_pkcs1 }
    }
}

impl PublicKeyData for Huge16384 {
    fn der_bytes(&self) -> &[u8] {
        &self.public_pkcs1
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_RSA_SHA256
    }
}

impl SigningKey for Huge16384 {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(vec![0x5A; 16384 / 8])
    }
}

#[test]
fn refuses_16384_bit_rsa_by_size_before_verifying() {
    let der = der_of(&params(vec![uri(ID)]), &Huge16384::new());
    assert_eq!(
        validate(&der),
        Err(CsrError::RsaKeySizeNotAllowed { bits: 16384 })
    );
    assert_eq!(reason(&der), "RSA_KEY_SIZE_NOT_ALLOWED");
}

#[test]
fn refuses_rsa_exponent_other_than_65537() {
    let der = der_of(&params(vec![uri(ID)]), &RsaSigner::new(rsa_key(2048, 3)));
    assert_eq!(reason(&der), "RSA_EXPONENT_NOT_ALLOWED");
}

#[test]
fn refuses_badly_encoded_public_keys() {
    let point = p256().der_bytes().to_vec();
    let cases = [
        ("Ed25519, 31 bytes", &PKCS_ED25519, vec![7; 31]),
        (
            "P-256, compressed point",
            &PKCS_ECDSA_P256_SHA256,
            [&[0x02], &point[1..33]].concat(),
        ),
        (
            "P-256, truncated point",
            &PKCS_ECDSA_P256_SHA256,
            point[..64].to_vec(),
        ),
        (
            "P-384 with a P-256 point",
            &PKCS_ECDSA_P384_SHA384,
            point.clone(),
        ),
        (
            "RSA, not a SEQUENCE",
            &PKCS_RSA_SHA256,
            vec![0x04, 0x01, 0x00],
        ),
        (
            "RSA, negative modulus",
            &PKCS_RSA_SHA256,
            tlv(
                0x30,
                &[tlv(0x02, &[0x80; 256]), tlv(0x02, &[1, 0, 1])].concat(),
            ),
        ),
    ];
    for (what, alg, public) in cases {
        let der = der_of(&params(vec![uri(ID)]), &RawKey { alg, public });
        assert_eq!(reason(&der), "PUBLIC_KEY_INVALID", "{what}");
    }
}

// ---- signature algorithm and proof of possession ----

#[test]
fn refuses_md5_and_sha1_signatures() {
    for (what, pem) in [
        ("sha1WithRSA", fixture!("rsa2048-sha1")),
        ("md5WithRSA", fixture!("rsa2048-md5")),
        ("ecdsa-with-SHA1", fixture!("p256-ecdsa-sha1")),
    ] {
        assert_eq!(reason(pem), "SIGNATURE_ALGORITHM_NOT_ALLOWED", "{what}");
    }
}

#[test]
fn refuses_a_flipped_signature_byte() {
    let keys = [
        p256(),
        KeyPair::generate_for(&PKCS_ED25519).unwrap(),
        rcgen_rsa(2048),
    ];
    for key in &keys {
        let der = der_of(&params(vec![uri(ID)]), key);
        assert!(validate(&der).is_ok());
        assert_eq!(reason(&flip_last_byte(der)), "CSR_SIGNATURE_INVALID");
    }
    let fixture = flip_last_byte(pem_to_der(fixture!("rsa2048-sha256")));
    assert_eq!(reason(&fixture), "CSR_SIGNATURE_INVALID");
}

#[test]
fn refuses_a_change_to_the_signed_content() {
    let der = der_of(&params(vec![uri(ID)]), &p256());
    let name = b"rcgen self signed cert";
    let at = der.windows(name.len()).position(|w| w == name).unwrap();
    let mut tampered = der.clone();
    tampered[at] = b'R';
    assert_eq!(reason(&tampered), "CSR_SIGNATURE_INVALID");
}

#[test]
fn refuses_a_csr_signed_by_another_key() {
    let (claimed, signer) = (p256(), p256());
    let der = der_of(
        &params(vec![uri(ID)]),
        &Mismatched {
            claimed: &claimed,
            signer: &signer,
        },
    );
    assert_eq!(reason(&der), "CSR_SIGNATURE_INVALID");
    // An Ed25519 signature on a P-256 key does not fit it at all.
    let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let der = der_of(
        &params(vec![uri(ID)]),
        &Mismatched {
            claimed: &claimed,
            signer: &ed,
        },
    );
    assert_eq!(reason(&der), "CSR_SIGNATURE_INVALID");
}

// ---- reason codes ----

#[test]
fn reason_codes_are_distinct_upper_snake() {
    let all = [
        CsrError::TooLarge { max: 1 },
        CsrError::Malformed,
        CsrError::TrailingData,
        CsrError::PublicKeyInvalid,
        CsrError::KeyTypeNotAllowed,
        CsrError::RsaKeySizeNotAllowed { bits: 1 },
        CsrError::RsaExponentNotAllowed,
        CsrError::SignatureAlgorithmNotAllowed,
        CsrError::SignatureInvalid,
        CsrError::ExtensionMalformed,
        CsrError::ExtensionDuplicate,
        CsrError::CaNotAllowed,
        CsrError::KeyUsageNotAllowed,
        CsrError::ExtendedKeyUsageNotAllowed,
        CsrError::NameConstraintsNotAllowed,
        CsrError::UnknownCriticalExtension,
        CsrError::TooManySans { max: 1 },
        CsrError::UriSanCount { found: 0 },
        CsrError::SanInvalidCharacters,
        CsrError::SanTypeNotAllowed { kind: "email" },
        CsrError::WildcardNotAllowed,
        CsrError::DnsNameInvalid,
    ];
    let reasons: std::collections::HashSet<_> = all.iter().map(CsrError::reason).collect();
    assert_eq!(reasons.len(), all.len());
    for r in reasons {
        assert!(
            r.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
            "{r}"
        );
    }
    let spiffe = CsrError::SpiffeId(SpiffeIdError::EmptyPath);
    assert_eq!(spiffe.reason(), SpiffeIdError::EmptyPath.reason());
}
