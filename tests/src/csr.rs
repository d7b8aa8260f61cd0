//! CSRs made with rcgen, and checks of what the server issued made by code we did not write
//! (x509-parser for the profile, webpki for the chain).

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// A fresh P-256 key and a PEM CSR for `spiffe_id` (plus DNS names).
pub fn csr(spiffe_id: &str, dns: &[&str]) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (csr_with_key(&key, spiffe_id, dns), key)
}

pub fn csr_with_key(key: &KeyPair, spiffe_id: &str, dns: &[&str]) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
    for d in dns {
        params
            .subject_alt_names
            .push(SanType::DnsName((*d).try_into().unwrap()));
    }
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// What a test learns from checking an issued chain.
#[derive(Debug)]
pub struct Checked {
    pub serial_hex: String,
    pub spiffe_id: String,
    pub not_before: i64,
    pub not_after: i64,
    pub leaf_der: Vec<u8>,
}

/// Verifies the leaf chains to `ca_pem` for client auth (webpki) and has Mintgate's profile
/// (x509-parser): one URI SAN, CA:FALSE critical, digitalSignature, EKU clientAuth only.
pub fn check_issued(chain_pem: &str, ca_pem: &str, expect_id: &str, now: i64) -> Checked {
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &chain[1..],
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now as u64)),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .expect("issued leaf must chain to the CA for client auth");

    let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
    let mut uris = Vec::new();
    let mut basic_ok = false;
    let mut eku_ok = false;
    let mut ku_ok = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    if let GeneralName::URI(u) = n {
                        uris.push(u.to_string());
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => basic_ok = ext.critical && !bc.ca,
            ParsedExtension::ExtendedKeyUsage(eku) => {
                eku_ok = eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty()
            }
            ParsedExtension::KeyUsage(ku) => {
                ku_ok = ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign()
            }
            _ => {}
        }
    }
    assert_eq!(uris, vec![expect_id.to_owned()], "exactly one URI SAN");
    assert!(basic_ok, "CA:FALSE, critical");
    assert!(eku_ok, "EKU clientAuth only");
    assert!(ku_ok, "KeyUsage digitalSignature, no CA bits");
    assert!(
        cert.raw_serial().len() >= 16,
        "serial has at least 128 bits"
    );
    Checked {
        serial_hex: hex::encode(
            cert.raw_serial()
                .iter()
                .copied()
                .skip_while(|b| *b == 0)
                .collect::<Vec<_>>(),
        ),
        spiffe_id: uris.remove(0),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        leaf_der: chain[0].to_vec(),
    }
}
