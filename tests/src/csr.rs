//! CSRs made with rcgen, and checks of what the server issued made by code we did not write
//! (x509-parser for the profile, webpki for the chain).

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
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

/// A node (client-auth) certificate for `spiffe_id` from `bootstrap_ca` (certificate and key
/// PEM), valid for a day either side of `now`: another node of the platform.
pub fn node_certificate(
    bootstrap_ca: &mintgate_ca::CertAndKey,
    spiffe_id: &str,
    now: time::OffsetDateTime,
) -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(1);
    let ca_key = KeyPair::from_pem(&bootstrap_ca.key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&bootstrap_ca.cert_pem, ca_key).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// What the caller asked for and the policy granted: the names an issued certificate must carry
/// (exactly these, in this order, as the server normalises them) and whether serverAuth was granted.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub spiffe_id: &'a str,
    pub dns_names: &'a [&'a str],
    pub server_auth: bool,
}

impl<'a> Expected<'a> {
    /// Only the SPIFFE ID: no DNS names, clientAuth only.
    pub fn id(spiffe_id: &'a str) -> Self {
        Self {
            spiffe_id,
            dns_names: &[],
            server_auth: false,
        }
    }

    /// The SPIFFE ID and these DNS names, clientAuth only.
    pub fn with_dns(spiffe_id: &'a str, dns_names: &'a [&'a str]) -> Self {
        Self {
            dns_names,
            ..Self::id(spiffe_id)
        }
    }
}

/// What a test learns from checking an issued chain.
#[derive(Debug)]
pub struct Checked {
    pub serial_hex: String,
    pub spiffe_id: String,
    pub dns_names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub leaf_der: Vec<u8>,
}

/// [`check_issued_as`] for a certificate that asked for `expect_id` and no DNS names.
pub fn check_issued(chain_pem: &str, ca_pem: &str, expect_id: &str, now: i64) -> Checked {
    check_issued_as(chain_pem, ca_pem, &Expected::id(expect_id), now)
}

/// Verifies the leaf chains to the root at the end of `ca_pem` (the trust bundle: the issuing
/// CA first, the root last) through the CAs the issued chain carries, for client auth at `now`
/// (webpki), and has Mintgate's
/// profile (x509-parser, DESIGN §4): a positive serial of 128 bits or more and at most 20 octets;
/// exactly the one URI SAN and the DNS SANs expected, nothing else; SKI present and AKI equal to
/// the CA's SKI; basicConstraints CA:FALSE critical; keyUsage critical with digitalSignature
/// (+keyEncipherment for RSA keys) only; EKU clientAuth, plus serverAuth exactly when granted.
pub fn check_issued_as(
    chain_pem: &str,
    ca_pem: &str,
    expected: &Expected<'_>,
    now: i64,
) -> Checked {
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let bundle: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let ca = bundle[0].clone();
    let root = bundle.last().unwrap();
    let anchor = webpki::anchor_from_trusted_cert(root).unwrap();
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
    .expect("issued leaf must chain to the root for client auth");

    let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
    let (_, ca_cert) = X509Certificate::from_der(&ca).unwrap();
    let ca_ski = subject_key_id(&ca_cert).expect("the CA certificate has an SKI");
    let profile = Profile::read(&cert);
    let what = expected.spiffe_id;

    let serial = cert.raw_serial();
    assert!(
        !serial.is_empty() && serial[0] & 0x80 == 0,
        "{what}: serial is positive"
    );
    assert!(serial.iter().any(|b| *b != 0), "{what}: serial is not zero");
    let magnitude: Vec<u8> = serial.iter().copied().skip_while(|b| *b == 0).collect();
    assert!(
        serial.len() <= 20,
        "{what}: serial is at most 20 octets, got {}",
        serial.len()
    );
    assert!(
        magnitude.len() >= 16,
        "{what}: serial has at least 128 bits"
    );

    assert_eq!(profile.uris, [expected.spiffe_id], "exactly one URI SAN");
    assert_eq!(profile.dns_names, expected.dns_names, "{what}: DNS SANs");
    assert!(
        profile.other_names.is_empty(),
        "{what}: SANs other than URI and DNS: {:?}",
        profile.other_names
    );

    assert!(
        profile.ski.as_ref().is_some_and(|ski| !ski.is_empty()),
        "{what}: SKI present"
    );
    assert_eq!(
        profile.aki.as_deref(),
        Some(ca_ski.as_slice()),
        "{what}: AKI keyIdentifier is the CA's SKI"
    );

    assert_eq!(
        profile.basic_constraints,
        Some(Critical(true, (false, None))),
        "{what}: basicConstraints CA:FALSE, critical, no pathLen"
    );

    let is_rsa = cert.public_key().algorithm.algorithm == OID_PKCS1_RSAENCRYPTION;
    let want_ku = KU_DIGITAL_SIGNATURE | if is_rsa { KU_KEY_ENCIPHERMENT } else { 0 };
    assert_eq!(
        profile.key_usage,
        Some(Critical(true, want_ku)),
        "{what}: keyUsage digitalSignature{} only, critical",
        if is_rsa { " + keyEncipherment" } else { "" }
    );

    let eku = profile.eku.expect("EKU present");
    assert!(eku.client_auth, "{what}: EKU clientAuth");
    assert_eq!(
        eku.server_auth, expected.server_auth,
        "{what}: EKU serverAuth exactly when granted"
    );
    assert!(
        !eku.server_auth || !profile.dns_names.is_empty(),
        "{what}: serverAuth only with DNS names"
    );
    assert!(
        eku.only_known,
        "{what}: no EKU besides clientAuth/serverAuth"
    );

    Checked {
        serial_hex: hex::encode(&magnitude),
        spiffe_id: profile.uris[0].clone(),
        dns_names: profile.dns_names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        leaf_der: chain[0].to_vec(),
    }
}

const KU_DIGITAL_SIGNATURE: u16 = 1;
const KU_KEY_ENCIPHERMENT: u16 = 1 << 2;

/// An extension value with its critical flag.
#[derive(Debug, PartialEq, Eq)]
struct Critical<T>(bool, T);

/// The EKU facts the profile cares about.
#[derive(Debug)]
struct Eku {
    client_auth: bool,
    server_auth: bool,
    only_known: bool,
}

/// The leaf's extensions as the profile check reads them.
#[derive(Debug, Default)]
struct Profile {
    uris: Vec<String>,
    dns_names: Vec<String>,
    other_names: Vec<String>,
    ski: Option<Vec<u8>>,
    aki: Option<Vec<u8>>,
    basic_constraints: Option<Critical<(bool, Option<u32>)>>,
    key_usage: Option<Critical<u16>>,
    eku: Option<Eku>,
}

impl Profile {
    fn read(cert: &X509Certificate<'_>) -> Self {
        let mut p = Self::default();
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(u) => p.uris.push((*u).to_owned()),
                            GeneralName::DNSName(d) => p.dns_names.push((*d).to_owned()),
                            other => p.other_names.push(format!("{other:?}")),
                        }
                    }
                }
                ParsedExtension::SubjectKeyIdentifier(ki) => {
                    assert!(!ext.critical, "SKI must not be critical");
                    p.ski = Some(ki.0.to_vec());
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    assert!(!ext.critical, "AKI must not be critical");
                    p.aki = aki.key_identifier.as_ref().map(|ki| ki.0.to_vec());
                }
                ParsedExtension::BasicConstraints(bc) => {
                    p.basic_constraints =
                        Some(Critical(ext.critical, (bc.ca, bc.path_len_constraint)));
                }
                ParsedExtension::KeyUsage(ku) => {
                    p.key_usage = Some(Critical(ext.critical, ku.flags))
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    p.eku = Some(Eku {
                        client_auth: eku.client_auth,
                        server_auth: eku.server_auth,
                        only_known: !eku.any
                            && !eku.code_signing
                            && !eku.email_protection
                            && !eku.time_stamping
                            && !eku.ocsp_signing
                            && eku.other.is_empty(),
                    });
                }
                _ => {}
            }
        }
        p
    }
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ki) => Some(ki.0.to_vec()),
            _ => None,
        })
}
