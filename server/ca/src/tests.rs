//! Tests of the signer against the certificate profile of DESIGN §4. Every certificate is checked
//! by code we did not write: x509-parser, rustls-webpki and, when installed, `openssl verify`.

use mintgate_domain::ports::{IssueSpec, SignedCertificate, Signer, SignerError};
use mintgate_domain::{KeyType, Serial, SpiffeId, TrustDomain};
use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};

use crate::softhsm::SoftHsm;
use crate::{CaError, CertificateAuthority, DevPki, KeyBackend, Pkcs11Key, generate_pki};

/// An RSA-2048 public key made with
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 | openssl pkey -pubout -outform DER`
/// (the private key was discarded).
const RSA_2048_SPKI: &[u8] = include_bytes!("../testdata/rsa2048.spki.der");
pub(crate) const CRL_URL: &str = "http://127.0.0.1:8080/crl";

pub(crate) fn trust_domain() -> TrustDomain {
    TrustDomain::parse("dev.mintgate.local").unwrap()
}

pub(crate) fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Verifies `leaf` up to the root `ca` with rustls-webpki for the given usage, at `now`.
pub(crate) fn webpki_verify(
    leaf: &[u8],
    ca: &[u8],
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    webpki_verify_chain(leaf, &[], ca, usage)
}

/// Verifies `leaf` through `intermediates` up to `root` with rustls-webpki, at `now`.
pub(crate) fn webpki_verify_chain(
    leaf: &[u8],
    intermediates: &[CertificateDer<'static>],
    root: &[u8],
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let ca = CertificateDer::from(root.to_vec());
    let anchors = [webpki::anchor_from_trusted_cert(&ca)?];
    let leaf = CertificateDer::from(leaf.to_vec());
    let ee = webpki::EndEntityCert::try_from(&leaf)?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

pub(crate) fn ca(crl_url: Option<&str>) -> (CertificateAuthority, DevPki) {
    let pki = generate_pki(&trust_domain(), OffsetDateTime::now_utc()).unwrap();
    let ca = CertificateAuthority::from_pem(
        &pki.ca.cert_pem,
        &pki.ca.key_pem,
        crl_url.map(str::to_owned),
    )
    .unwrap();
    (ca, pki)
}

/// A CA whose key is in a fresh SoftHSM token (generated there), with an intermediate
/// certificate made for it under a dev root, like the dev issuing CA's.
pub(crate) fn pkcs11_ca(hsm: &SoftHsm, crl_url: Option<&str>) -> CertificateAuthority<Pkcs11Key> {
    let config = hsm.token("mintgate-ca-test", "issuing-ca").unwrap();
    let (key, generated) = Pkcs11Key::open_or_generate(&config).unwrap();
    assert!(generated);
    let pki = crate::generate_pki_with_issuing_key(&trust_domain(), OffsetDateTime::now_utc(), key)
        .unwrap();
    let key = Pkcs11Key::open(&config).unwrap();
    CertificateAuthority::from_pem_with_key(&pki.ca.cert_pem, key, crl_url.map(str::to_owned))
        .unwrap()
}

/// Runs a check of the signer on a CA with a file key and, in a SoftHSM child process, on one
/// with a PKCS#11 key: `on_both_backends!(name, check, crl_url)`.
macro_rules! on_both_backends {
    ($name:ident, $check:ident, $crl:expr) => {
        mod $name {
            #[test]
            fn file() {
                super::$check(&crate::tests::ca($crl).0);
            }

            crate::softhsm_test! {
                fn pkcs11(hsm) {
                    super::$check(&crate::tests::pkcs11_ca(hsm, $crl));
                }
            }
        }
    };
}
pub(crate) use on_both_backends;

fn spki_for(alg: &'static SignatureAlgorithm) -> Vec<u8> {
    KeyPair::generate_for(alg)
        .unwrap()
        .subject_public_key_info()
}

/// The subject keys DESIGN §4 accepts, one per family.
fn subject_keys() -> Vec<(KeyType, Vec<u8>)> {
    vec![
        (KeyType::EcdsaP256, spki_for(&rcgen::PKCS_ECDSA_P256_SHA256)),
        (KeyType::EcdsaP384, spki_for(&rcgen::PKCS_ECDSA_P384_SHA384)),
        (KeyType::Ed25519, spki_for(&rcgen::PKCS_ED25519)),
        (KeyType::Rsa2048, RSA_2048_SPKI.to_vec()),
    ]
}

struct Request {
    spki: Vec<u8>,
    key_type: KeyType,
    id: SpiffeId,
    dns: Vec<String>,
    serial: Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    server_auth: bool,
}

impl Request {
    fn new(key_type: KeyType, spki: Vec<u8>) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            spki,
            key_type,
            id: SpiffeId::parse("spiffe://dev.mintgate.local/ns/web/sa/api").unwrap(),
            dns: Vec::new(),
            serial: Serial::from_random([0xa5; 17]),
            not_before: now - Duration::seconds(30),
            not_after: now + Duration::hours(1),
            server_auth: false,
        }
    }

    fn spec(&self) -> IssueSpec<'_> {
        IssueSpec {
            spki_der: &self.spki,
            key_type: self.key_type,
            spiffe_id: &self.id,
            dns_names: &self.dns,
            serial: &self.serial,
            not_before: self.not_before,
            not_after: self.not_after,
            server_auth: self.server_auth,
        }
    }
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect()
}

fn dns_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some(*name),
            _ => None,
        })
        .collect()
}

/// Asserts the whole DESIGN §4 profile on one issued certificate.
fn assert_profile<K: KeyBackend>(
    ca: &CertificateAuthority<K>,
    req: &Request,
    signed: &SignedCertificate,
) {
    let ca_cert = parse(ca.ca_cert_der());
    let cert = parse(&signed.der);
    let what = req.key_type;

    assert_eq!(
        uri_sans(&cert),
        [req.id.as_str()],
        "{what}: exactly one URI SAN"
    );
    assert_eq!(dns_sans(&cert), req.dns, "{what}: DNS SANs");
    assert_eq!(
        cert.public_key().raw,
        &req.spki[..],
        "{what}: the CSR's key is certified"
    );
    assert_eq!(
        cert.issuer().as_raw(),
        ca_cert.subject().as_raw(),
        "{what}: issuer"
    );

    let bc = cert.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.critical && !bc.value.ca, "{what}: CA:FALSE critical");
    assert_eq!(bc.value.path_len_constraint, None);

    let ku = cert.key_usage().unwrap().expect("keyUsage");
    assert!(ku.critical, "{what}: keyUsage critical");
    assert!(ku.value.digital_signature(), "{what}: digitalSignature");
    assert_eq!(
        ku.value.key_encipherment(),
        what.is_rsa(),
        "{what}: keyEncipherment iff RSA"
    );
    let allowed = 0b101; // digitalSignature (bit 0) and keyEncipherment (bit 2)
    assert_eq!(ku.value.flags & !allowed, 0, "{what}: no other key usage");

    let eku = cert
        .extended_key_usage()
        .unwrap()
        .expect("extendedKeyUsage")
        .value;
    assert!(eku.client_auth, "{what}: clientAuth");
    assert_eq!(
        eku.server_auth, req.server_auth,
        "{what}: serverAuth only when asked"
    );
    assert!(!eku.any && !eku.code_signing && !eku.email_protection && !eku.time_stamping);
    assert!(!eku.ocsp_signing && eku.other.is_empty());

    assert_eq!(cert.raw_serial(), req.serial.as_bytes(), "{what}: serial");

    let want_not_after = req.not_after.min(ca.not_after()).truncate_to_second();
    assert_eq!(
        cert.validity().not_before.to_datetime(),
        req.not_before.truncate_to_second()
    );
    assert_eq!(cert.validity().not_after.to_datetime(), want_not_after);
    assert_eq!(signed.not_before, req.not_before.truncate_to_second());
    assert_eq!(signed.not_after, want_not_after);

    let ski = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
    assert!(ski.is_some_and(|s| !s.is_empty()), "{what}: SKI");
    let ca_ski = ca_cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
    let aki = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    assert_eq!(aki, ca_ski, "{what}: AKI is the CA's SKI");

    let crl_uris: Vec<String> = cert
        .iter_extensions()
        .filter_map(|e| match e.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(dps) => Some(dps),
            _ => None,
        })
        .flat_map(|dps| dps.points.iter())
        .filter_map(|dp| match &dp.distribution_point {
            Some(DistributionPointName::FullName(names)) => Some(names),
            _ => None,
        })
        .flatten()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect();
    let want_crl: Vec<String> = ca.crl_url().map(str::to_owned).into_iter().collect();
    assert_eq!(crl_uris, want_crl, "{what}: CRL distribution point");

    let pems: Vec<_> = CertificateDer::pem_slice_iter(signed.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(pems.len(), 2, "{what}: chain is leaf then the issuing CA");
    assert_eq!(&pems[0][..], &signed.der[..]);
    assert_eq!(&pems[1][..], &ca.ca_cert_der()[..]);

    // From the leaf through what it carries to the root of the CA's chain.
    let root = ca.chain_der().last().unwrap();
    assert_eq!(ca.chain_der().len(), 2, "the issuing CA is an intermediate");
    webpki_verify_chain(
        &signed.der,
        &pems[1..],
        root,
        webpki::KeyUsage::client_auth(),
    )
    .unwrap_or_else(|e| panic!("{what}: webpki refuses the chain: {e:?}"));
    assert!(
        webpki_verify(&signed.der, root, webpki::KeyUsage::client_auth()).is_err(),
        "{what}: the leaf alone does not reach the root"
    );
}

on_both_backends!(
    issues_the_profile,
    issues_the_profile_for_every_accepted_key_type,
    Some(crate::tests::CRL_URL)
);

fn issues_the_profile_for_every_accepted_key_type<K: KeyBackend>(ca: &CertificateAuthority<K>) {
    for (key_type, spki) in subject_keys() {
        let req = Request::new(key_type, spki);
        let signed = ca.sign(&req.spec()).unwrap();
        assert_profile(ca, &req, &signed);
    }
}

on_both_backends!(
    server_auth,
    server_auth_and_dns_names_only_when_asked_and_no_crl_dp_when_unconfigured,
    None
);

fn server_auth_and_dns_names_only_when_asked_and_no_crl_dp_when_unconfigured<K: KeyBackend>(
    ca: &CertificateAuthority<K>,
) {
    let mut req = Request::new(KeyType::EcdsaP256, spki_for(&rcgen::PKCS_ECDSA_P256_SHA256));
    req.server_auth = true;
    req.dns = vec!["api.web.svc".to_owned()];
    let signed = ca.sign(&req.spec()).unwrap();
    assert_profile(ca, &req, &signed);
    webpki_verify(
        &signed.der,
        ca.ca_cert_der(),
        webpki::KeyUsage::server_auth(),
    )
    .unwrap();

    req.server_auth = false;
    req.dns.clear();
    let signed = ca.sign(&req.spec()).unwrap();
    assert_profile(ca, &req, &signed);
    assert!(
        webpki_verify(
            &signed.der,
            ca.ca_cert_der(),
            webpki::KeyUsage::server_auth()
        )
        .is_err(),
        "a client-only certificate must not pass as a server certificate"
    );
}

on_both_backends!(
    validity,
    validity_is_clamped_to_the_ca_and_an_expired_ca_refuses,
    None
);

fn validity_is_clamped_to_the_ca_and_an_expired_ca_refuses<K: KeyBackend>(
    ca: &CertificateAuthority<K>,
) {
    let mut req = Request::new(KeyType::Ed25519, spki_for(&rcgen::PKCS_ED25519));
    req.not_after = ca.not_after() + Duration::days(30);
    let signed = ca.sign(&req.spec()).unwrap();
    assert_eq!(signed.not_after, ca.not_after());
    assert_profile(ca, &req, &signed);

    req.not_before = ca.not_after() + Duration::seconds(1);
    assert!(matches!(
        ca.issue(&req.spec()),
        Err(CaError::EmptyValidity { .. })
    ));
    assert!(matches!(ca.sign(&req.spec()), Err(SignerError::Build(_))));
}

#[test]
fn long_spiffe_ids_get_no_common_name_and_a_critical_san() {
    let (ca, _) = ca(None);
    let mut req = Request::new(KeyType::EcdsaP256, spki_for(&rcgen::PKCS_ECDSA_P256_SHA256));
    let cert_der = ca.sign(&req.spec()).unwrap().der;
    let cn: Vec<_> = parse(&cert_der)
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cn, [req.id.as_str()]);

    req.id = SpiffeId::parse(&format!("spiffe://dev.mintgate.local/{}", "a".repeat(100))).unwrap();
    let signed = ca.sign(&req.spec()).unwrap();
    let cert = parse(&signed.der);
    assert_eq!(cert.subject().iter().count(), 0, "empty subject");
    assert!(cert.subject_alternative_name().unwrap().unwrap().critical);
    assert_profile(&ca, &req, &signed);
}

#[test]
fn refuses_a_key_whose_type_disagrees_or_that_is_not_a_public_key() {
    let (ca, _) = ca(None);
    let req = Request::new(KeyType::Rsa2048, spki_for(&rcgen::PKCS_ECDSA_P256_SHA256));
    assert!(matches!(
        ca.issue(&req.spec()),
        Err(CaError::KeyTypeMismatch { .. })
    ));
    let req = Request::new(KeyType::EcdsaP256, RSA_2048_SPKI.to_vec());
    assert!(matches!(
        ca.issue(&req.spec()),
        Err(CaError::KeyTypeMismatch { .. })
    ));
    let req = Request::new(KeyType::EcdsaP256, b"not a key".to_vec());
    assert!(matches!(
        ca.issue(&req.spec()),
        Err(CaError::SubjectPublicKey(_))
    ));
    let mut spki = spki_for(&rcgen::PKCS_ED25519);
    spki.push(0);
    let req = Request::new(KeyType::Ed25519, spki);
    assert!(ca.issue(&req.spec()).is_err(), "trailing bytes are refused");
}

#[test]
fn from_pem_refuses_non_ca_mismatched_key_and_broken_chains() {
    let (_, pki) = ca(None);
    let server_only = der_of(&pki.server.cert_pem);
    let server_key = crate::FileKey::from_pem(&pki.server.key_pem).unwrap();
    let err = CertificateAuthority::new(server_only, server_key, None);
    assert!(matches!(err, Err(CaError::NotACa { .. })), "{err:?}");
    let err = CertificateAuthority::from_pem(&pki.ca.cert_pem, &pki.operator_ca.key_pem, None);
    assert!(matches!(err, Err(CaError::KeyMismatch)), "{err:?}");
    let err = CertificateAuthority::from_pem("", &pki.ca.key_pem, None);
    assert!(
        matches!(err, Err(CaError::CertificateCount { found: 0 })),
        "{err:?}"
    );
    let err = CertificateAuthority::from_pem(&pki.ca.cert_pem, "garbage", None);
    assert!(matches!(err, Err(CaError::KeyPem(_))), "{err:?}");

    // The issuing CA alone, without the root above it.
    let intermediate = crate::signer::pem_encode(&der_of(&pki.ca.cert_pem));
    let err = CertificateAuthority::from_pem(&intermediate, &pki.ca.key_pem, None).unwrap_err();
    assert!(matches!(err, CaError::Chain { position: 0, .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("append the certificates up to the root"),
        "{err}"
    );
    // Another root after it: names and signatures do not link.
    let wrong = format!("{intermediate}{}", pki.bootstrap_ca.cert_pem);
    let err = CertificateAuthority::from_pem(&wrong, &pki.ca.key_pem, None).unwrap_err();
    assert!(matches!(err, CaError::Chain { position: 1, .. }), "{err:?}");
    // The same root's name with another key.
    let other = generate_pki(&trust_domain(), OffsetDateTime::now_utc()).unwrap();
    let forged = format!("{intermediate}{}", other.root.cert_pem);
    let err = CertificateAuthority::from_pem(&forged, &pki.ca.key_pem, None).unwrap_err();
    assert!(
        err.to_string().contains("does not verify the signature"),
        "{err}"
    );
    // The right chain: the issuing CA, then its root.
    let ca = CertificateAuthority::from_pem(&pki.ca.cert_pem, &pki.ca.key_pem, None).unwrap();
    assert_eq!(ca.chain_der().len(), 2);
    assert_eq!(ca.chain_der()[1], der_of(&pki.root.cert_pem));
}

#[test]
fn trust_bundle_and_debug_output() {
    let (ca, pki) = ca(Some(CRL_URL));
    // The bundle is the issuing CA then the root; the issuing CA is the CA.
    assert_eq!(
        ca.trust_bundle_pem(),
        format!(
            "{}{}",
            crate::signer::pem_encode(ca.ca_cert_der()),
            pki.root.cert_pem
        )
    );
    assert_eq!(ca.trust_bundle_pem(), pki.ca.cert_pem);
    assert_eq!(ca.ca_cert_der(), &der_of(&pki.ca.cert_pem));
    assert_eq!(
        ca.not_after(),
        parse(ca.ca_cert_der()).validity().not_after.to_datetime()
    );

    let key_body: String = pki
        .ca
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let debug = format!(
        "{ca:?} {:?} {pki:?}",
        crate::FileKey::from_pem(&pki.ca.key_pem).unwrap()
    );
    assert!(debug.contains("Mintgate Dev Issuing CA"), "{debug}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    assert!(!debug.contains(&key_body[..40]), "{debug}");
    assert!(!debug.contains(pki.join_token_key_hex.trim()), "{debug}");
}

on_both_backends!(
    openssl,
    openssl_verifies_issued_certificates_as_ssl_clients,
    Some(crate::tests::CRL_URL)
);

fn openssl_verifies_issued_certificates_as_ssl_clients<K: KeyBackend>(
    ca: &CertificateAuthority<K>,
) {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("MINTGATE_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "openssl is not on PATH and MINTGATE_REQUIRE_TOOLS=1"
        );
        println!("note: openssl is not on PATH; skipping the openssl cross-check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Only the root is trusted; the issuing CA comes from the chain the leaf is issued with.
    let root_path = dir.path().join("root.pem");
    let root = ca.chain_der().last().unwrap();
    std::fs::write(&root_path, crate::signer::pem_encode(root)).unwrap();
    for (key_type, spki) in subject_keys() {
        let req = Request::new(key_type, spki);
        let signed = ca.sign(&req.spec()).unwrap();
        let leaf_path = dir.path().join("leaf.pem");
        std::fs::write(&leaf_path, crate::signer::pem_encode(&signed.der)).unwrap();
        let chain_path = dir.path().join("chain.pem");
        let (_, after_leaf) = signed
            .chain_pem
            .split_once("-----END CERTIFICATE-----\n")
            .unwrap();
        std::fs::write(&chain_path, after_leaf).unwrap();
        let verify = |untrusted: bool| {
            let mut cmd = std::process::Command::new("openssl");
            cmd.args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
                .arg(&root_path);
            if untrusted {
                cmd.arg("-untrusted").arg(&chain_path);
            }
            cmd.arg(&leaf_path).output().unwrap()
        };
        assert!(
            !verify(false).status.success(),
            "{key_type}: the leaf alone must not reach the root"
        );
        let out = verify(true);
        assert!(
            out.status.success(),
            "{key_type}: openssl verify failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

on_both_backends!(crl, a_signed_crl_verifies_under_the_ca, None);

fn a_signed_crl_verifies_under_the_ca<K: KeyBackend>(ca: &CertificateAuthority<K>) {
    let now = OffsetDateTime::now_utc();
    let crl = ca
        .sign_crl(&mintgate_domain::ports::CrlSpec {
            issuer_key_id: "",
            this_update: now,
            next_update: now + Duration::hours(1),
            number: 3,
            entries: &[],
        })
        .unwrap();
    let summary = crate::verify_crl(ca.trust_bundle_pem().as_bytes(), &crl).unwrap();
    assert_eq!(summary.this_update, now.truncate_to_second());
}
