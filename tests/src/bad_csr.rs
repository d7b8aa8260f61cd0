//! Building blocks for CSRs the server must refuse: rcgen params with any SAN or extension, raw
//! DER for what rcgen will not encode (NUL bytes, invalid UTF-8), signers that lie about their key,
//! and openssl-made fixtures for keys and digests rcgen cannot use (`fixtures/csr/make.sh`).
//!
//! Each builder changes one property of an otherwise acceptable CSR, so a refusal can be pinned to
//! that property.

use rcgen::{
    CertificateParams, CustomExtension, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
    PublicKeyData, SanType, SignatureAlgorithm, SigningKey,
};

/// An openssl-made CSR from `fixtures/csr/` (PEM). Each asks for
/// `spiffe://dev.mintgate.local/workload/web`.
pub fn fixture(name: &str) -> &'static [u8] {
    macro_rules! fixtures {
        ($($name:literal),* $(,)?) => {
            match name {
                $($name => include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"), "/fixtures/csr/", $name, ".pem"
                )).as_slice(),)*
                other => panic!("no CSR fixture named {other}"),
            }
        };
    }
    fixtures!(
        "p256-sha256",
        "rsa2048-sha256",
        "rsa2048-sha1",
        "rsa2048-md5",
        "p256-ecdsa-sha1",
        "rsa1024-sha256",
        "rsa2560-sha256",
        "rsa2048-e3-sha256",
        "ec-prime192v1",
        "ec-secp256k1",
        "ec-brainpoolP256r1",
        "ed448",
    )
}

pub fn p256() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

pub fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

pub fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

/// Params with these SANs and nothing else requested.
pub fn params(sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params
}

/// Params for `spiffe_id` plus one extra requested extension.
pub fn with_extension(spiffe_id: &str, ext: CustomExtension) -> CertificateParams {
    let mut p = params(vec![uri(spiffe_id)]);
    p.custom_extensions.push(ext);
    p
}

/// Params whose only SAN extension is made of these raw GeneralName TLVs.
pub fn raw_sans(entries: &[Vec<u8>]) -> CertificateParams {
    let mut p = params(vec![]);
    p.custom_extensions.push(raw_san(entries));
    p
}

/// The DER CSR for `params`, signed by `key`.
pub fn der(params: &CertificateParams, key: &impl SigningKey) -> Vec<u8> {
    params.serialize_request(key).unwrap().der().to_vec()
}

/// The PEM CSR for `params`, signed by a fresh P-256 key.
pub fn pem(params: &CertificateParams) -> Vec<u8> {
    params
        .serialize_request(&p256())
        .unwrap()
        .pem()
        .unwrap()
        .into_bytes()
}

/// A DER TLV with a short or long-form length (up to 64 KiB of content).
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    match len {
        0..0x80 => out.push(len as u8),
        0x80..0x100 => out.extend([0x81, len as u8]),
        0x100..0x10000 => out.extend([0x82, (len >> 8) as u8, len as u8]),
        _ => panic!("TLV content of {len} bytes is too long for this helper"),
    }
    out.extend_from_slice(content);
    out
}

/// A subjectAltName extension built from raw GeneralName TLVs (to put any byte into a SAN).
pub fn raw_san(entries: &[Vec<u8>]) -> CustomExtension {
    CustomExtension::from_oid_content(&[2, 5, 29, 17], tlv(0x30, &entries.concat()))
}

/// A uniformResourceIdentifier GeneralName holding these exact bytes.
pub fn raw_uri(s: &[u8]) -> Vec<u8> {
    tlv(0x86, s)
}

/// A dNSName GeneralName holding these exact bytes.
pub fn raw_dns(s: &[u8]) -> Vec<u8> {
    tlv(0x82, s)
}

/// An rfc822Name GeneralName holding these exact bytes.
pub fn raw_email(s: &[u8]) -> Vec<u8> {
    tlv(0x81, s)
}

/// DER with the last byte (inside the signature BIT STRING) flipped.
pub fn flip_last_byte(mut der: Vec<u8>) -> Vec<u8> {
    *der.last_mut().unwrap() ^= 0x01;
    der
}

/// Claims one key's public key but signs with another: no proof of possession.
pub struct Mismatched<'a> {
    pub claimed: &'a KeyPair,
    pub signer: &'a KeyPair,
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

/// Claims an RSA public key of `bits` bits (a made-up odd modulus, e = 65537) with a junk
/// signature of the same size. Generating a real 16384-bit key takes minutes; the server judges
/// the key size before it verifies anything, so it refuses this for its size alone.
pub struct FakeRsa {
    bits: usize,
    public_pkcs1: Vec<u8>,
}

impl FakeRsa {
    pub fn new(bits: usize) -> Self {
        let mut modulus = vec![0xC5_u8; bits / 8];
        modulus.insert(0, 0x00); // a positive INTEGER
        let public_pkcs1 = tlv(
            0x30,
            &[tlv(0x02, &modulus), tlv(0x02, &[0x01, 0x00, 0x01])].concat(),
        );
        Self { bits, public_pkcs1 }
    }
}

impl PublicKeyData for FakeRsa {
    fn der_bytes(&self) -> &[u8] {
        &self.public_pkcs1
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_RSA_SHA256
    }
}

impl SigningKey for FakeRsa {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(vec![0x5A; self.bits / 8])
    }
}

/// The DER inside one PEM CSR.
pub fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem)
        .unwrap()
        .as_ref()
        .to_vec()
}
