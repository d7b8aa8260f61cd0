//! The issuing CA's key in a PKCS#11 token (SoftHSM2; each test in a child process with a token
//! directory of its own, see `mintgate_ca::softhsm`), on SQLite and PostgreSQL: what it issues
//! verifies under webpki and `openssl verify`, and the CRL and OCSP answers it signs in the token
//! verify under the CA certificate (x509-parser, `openssl ocsp`).

use std::process::Command;

use mintgate_ca::pkcs11::Pkcs11Key;
use mintgate_ca::softhsm::SoftHsm;
use mintgate_sdk::v1;
use mintgate_tests::{Backend, Options, TestServer, db, tool_available};
use rustls_pki_types::pem::PemObject as _;

use crate::issuance::WORKLOAD;
use crate::ocsp::{Files, assert_verified};
use crate::revocation::{enroll, revoke_request};

mintgate_ca::softhsm_test! {
    fn issuance_crl_and_ocsp_are_signed_in_the_token(hsm) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            issue_revoke_and_check(hsm, Backend::Sqlite).await;
            if db::postgres_available().await {
                issue_revoke_and_check(hsm, Backend::Postgres).await;
            }
        });
    }
}

async fn issue_revoke_and_check(hsm: &SoftHsm, backend: Backend) {
    let config = hsm
        .token(&format!("e2e-{backend:?}"), "issuing-ca")
        .unwrap();
    let server = TestServer::spawn_with(Options {
        pkcs11: Some(config.clone()),
        ..Options::new(backend)
    })
    .await;
    // The CA certificate is for the token's key: the server signs with nothing else.
    let key = Pkcs11Key::open(&config).unwrap();
    let ca_der =
        rustls_pki_types::CertificateDer::from_pem_slice(server.pki.ca.cert_pem.as_bytes())
            .unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(
        ca.public_key().raw,
        &rcgen::PublicKeyData::subject_public_key_info(&key)[..]
    );

    // enroll() checks the chain with webpki and x509-parser.
    let workload = enroll(&server, WORKLOAD, "hsm-1").await;
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(dir.path(), &server, &workload);
    let openssl = tool_available("openssl");
    if openssl {
        let out = Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
            .args([&files.ca, &files.leaf])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    (server.admin_revocation().await)
        .revoke(revoke_request(
            "hsm-r",
            &workload.serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();
    let (status, crl) = server.http_get("/crl").await;
    assert_eq!(status, 200);
    let summary = mintgate_ca::verify_crl(server.pki.ca.cert_pem.as_bytes(), &crl).unwrap();
    assert_eq!(summary.revoked, 1);
    if openssl {
        let url = format!("http://{}/ocsp", server.http_addr);
        let out = files.ocsp(&["-url", &url], &[]);
        assert_verified(&out, &files.leaf, "revoked");
        assert!(out.contains("Reason: keyCompromise"), "{out}");
    }
    server.shutdown().await;
}
