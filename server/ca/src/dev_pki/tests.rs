//! Tests for the dev PKI: what it writes, and that it never overwrites.

use std::os::unix::fs::PermissionsExt as _;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, IpAddr as PkiIpAddr, PrivateKeyDer, ServerName};

use super::*;
use crate::tests::{der_of, trust_domain, webpki_verify};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn uris(pem: &str) -> Vec<String> {
    let der = der_of(pem);
    let cert = parse_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn writes_every_file_with_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs-dev");
    let paths = write_dev_pki(&certs, &trust_domain()).unwrap();
    assert!(paths.created);
    for (path, secrecy) in paths.entries() {
        let want = match secrecy {
            Secrecy::Public => 0o644,
            Secrecy::Secret => 0o600,
        };
        assert_eq!(mode(path), want, "{}", path.display());
    }
    let names: Vec<_> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        paths.entries().len(),
        "no temporary files left behind: {names:?}"
    );

    let token = std::fs::read_to_string(&paths.join_token_key).unwrap();
    let hex_part = token.strip_suffix('\n').unwrap();
    assert_eq!(hex::decode(hex_part).unwrap().len(), 32);
    assert_eq!(token.lines().count(), 1);

    for key in [
        &paths.ca_key,
        &paths.server_key,
        &paths.node_key,
        &paths.admin_key,
    ] {
        let pem = std::fs::read_to_string(key).unwrap();
        // A PKCS#8 key, as the server's loader expects.
        let parsed = PrivateKeyDer::from_pem_slice(pem.as_bytes());
        assert!(
            matches!(parsed, Ok(PrivateKeyDer::Pkcs8(_))),
            "{}",
            key.display()
        );
        FileKey::from_pem(&pem).unwrap();
    }
    let ca = crate::CertificateAuthority::from_pem(
        &std::fs::read_to_string(&paths.ca_cert).unwrap(),
        &std::fs::read_to_string(&paths.ca_key).unwrap(),
        None,
    );
    assert!(ca.is_ok(), "the written CA loads as the issuing CA: {ca:?}");
}

#[test]
fn never_overwrites_and_refuses_a_partial_pki() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_dev_pki(dir.path(), &trust_domain()).unwrap();
    let before: Vec<_> = first
        .entries()
        .iter()
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect();

    let second = write_dev_pki(dir.path(), &trust_domain()).unwrap();
    assert!(!second.created);
    let after: Vec<_> = second
        .entries()
        .iter()
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(before, after, "an existing dev PKI is kept as it is");

    std::fs::remove_file(&first.server_key).unwrap();
    let err = write_dev_pki(dir.path(), &trust_domain()).unwrap_err();
    match &err {
        CaError::PartialDevPki { missing, .. } => {
            assert_eq!(missing, std::slice::from_ref(&first.server_key))
        }
        other => panic!("expected PartialDevPki, got {other:?}"),
    }
    assert!(err.to_string().contains("server.key"), "{err}");
    assert!(!first.server_key.exists(), "nothing is written on refusal");
    assert_eq!(std::fs::read(&first.ca_key).unwrap(), before[3]);
}

#[test]
fn a_file_in_the_way_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let paths = DevPkiPaths::in_dir(dir.path());
    std::fs::write(&paths.admin_cert, "mine").unwrap();
    let err = write_dev_pki(dir.path(), &trust_domain()).unwrap_err();
    assert!(matches!(err, CaError::PartialDevPki { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&paths.admin_cert).unwrap(), "mine");
    assert!(write_new_file(dir.path(), &paths.admin_cert, "x", Secrecy::Public).is_err());
    assert_eq!(std::fs::read_to_string(&paths.admin_cert).unwrap(), "mine");
}

#[test]
fn certificates_verify_under_their_own_ca_only() {
    let pki = generate_pki(&trust_domain(), OffsetDateTime::now_utc()).unwrap();
    let ca = der_of(&pki.ca.cert_pem);
    let bootstrap_ca = der_of(&pki.bootstrap_ca.cert_pem);
    let operator_ca = der_of(&pki.operator_ca.cert_pem);

    let server = der_of(&pki.server.cert_pem);
    webpki_verify(&server, &ca, webpki::KeyUsage::server_auth()).unwrap();
    // Through the issuing CA to the root, as clients see it: server.pem carries the issuing CA.
    let root = der_of(&pki.root.cert_pem);
    let server_chain: Vec<_> = CertificateDer::pem_slice_iter(pki.server.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(server_chain.len(), 2);
    assert_eq!(server_chain[1], ca);
    crate::tests::webpki_verify_chain(
        &server,
        &server_chain[1..],
        &root,
        webpki::KeyUsage::server_auth(),
    )
    .unwrap();
    assert!(
        webpki_verify(&server, &root, webpki::KeyUsage::server_auth()).is_err(),
        "not without the issuing CA"
    );
    let ee = webpki::EndEntityCert::try_from(&server).unwrap();
    for name in [
        ServerName::try_from("localhost").unwrap(),
        ServerName::IpAddress(PkiIpAddr::from(IpAddr::V4(Ipv4Addr::LOCALHOST))),
        ServerName::IpAddress(PkiIpAddr::from(IpAddr::V6(Ipv6Addr::LOCALHOST))),
    ] {
        ee.verify_is_valid_for_subject_name(&name).unwrap();
    }
    assert!(
        ee.verify_is_valid_for_subject_name(&ServerName::try_from("example.com").unwrap())
            .is_err()
    );
    assert!(webpki_verify(&server, &ca, webpki::KeyUsage::client_auth()).is_err());

    let node = der_of(&pki.node.cert_pem);
    webpki_verify(&node, &bootstrap_ca, webpki::KeyUsage::client_auth()).unwrap();
    assert!(webpki_verify(&node, &ca, webpki::KeyUsage::client_auth()).is_err());
    assert!(webpki_verify(&node, &operator_ca, webpki::KeyUsage::client_auth()).is_err());

    let admin = der_of(&pki.admin.cert_pem);
    webpki_verify(&admin, &operator_ca, webpki::KeyUsage::client_auth()).unwrap();
    assert!(webpki_verify(&admin, &bootstrap_ca, webpki::KeyUsage::client_auth()).is_err());

    let td = "spiffe://dev.mintgate.local";
    assert_eq!(
        uris(&pki.server.cert_pem),
        [format!("{td}/mintgate/server")]
    );
    assert_eq!(uris(&pki.node.cert_pem), [format!("{td}/node/dev-node-1")]);
    assert_eq!(uris(&pki.admin.cert_pem), [format!("{td}/operator/admin")]);
}

#[test]
fn dev_cas_are_pathlen_zero_cert_signers_valid_for_a_year() {
    let now = OffsetDateTime::now_utc();
    let pki = generate_pki(&trust_domain(), now).unwrap();
    for pem in [
        &pki.ca.cert_pem,
        &pki.bootstrap_ca.cert_pem,
        &pki.operator_ca.cert_pem,
    ] {
        let der = der_of(pem);
        let cert = parse_certificate(&der).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        let validity = cert.validity();
        assert!(validity.not_before.to_datetime() <= now);
        let days = (validity.not_after.to_datetime() - now).whole_days();
        assert!((364..=365).contains(&days), "{days}");
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
    }
}

#[test]
fn recognises_dev_material_and_nothing_else() {
    let pki = generate_pki(&trust_domain(), OffsetDateTime::now_utc()).unwrap();
    for pem in [
        &pki.ca.cert_pem,
        &pki.server.cert_pem,
        &pki.bootstrap_ca.cert_pem,
        &pki.node.cert_pem,
        &pki.operator_ca.cert_pem,
        &pki.admin.cert_pem,
    ] {
        assert!(is_dev_material(&der_of(pem)));
    }

    let key = FileKey::generate_p256().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Example Corp");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let prod = params.self_signed(&key).unwrap();
    assert!(!is_dev_material(prod.der()));
    assert!(!is_dev_material(b"not a certificate"));
}
