//! The issuing CA is an intermediate under a root (DESIGN §14): what Mintgate issues carries it,
//! `/bundle.pem` and every answer's trust bundle hold it and the root, `openssl verify` with only
//! the root trusted accepts an issued chain, and the mTLS listener checks a workload up to the
//! root through it, supplying it when the workload sends only its own certificate.

use std::process::Command;

use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::{Backend, TestServer, both_backends, tool_available};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::issuance::{WORKLOAD, enroll_request};

both_backends!(
    issued_chains_and_the_bundle_include_the_intermediate,
    chains
);

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn chains(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let root = ders(&server.pki.root.cert_pem).remove(0);
    let issuing = ders(&server.pki.ca.cert_pem).remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&issuing).unwrap();
    assert!(
        !parsed.subject().as_raw().eq(parsed.issuer().as_raw()),
        "an intermediate"
    );

    let (status, bundle) = server.http_get("/bundle.pem").await;
    assert_eq!(status, 200);
    let bundle = String::from_utf8(bundle).unwrap();
    assert_eq!(
        ders(&bundle),
        [issuing.clone(), root.clone()],
        "issuing CA, then root"
    );

    let (csr_pem, key) = csr(WORKLOAD, &[]);
    let issued = server
        .node()
        .await
        .enroll(enroll_request("chain-1", &csr_pem))
        .await
        .unwrap();
    assert_eq!(issued.trust_bundle_pem, bundle);
    let chain = ders(&issued.certificate_chain_pem);
    assert_eq!(chain.len(), 2, "leaf, then the issuing CA (not the root)");
    assert_eq!(chain[1], issuing);
    // webpki from the root alone, through the chain the leaf came with.
    let now = server.clock.now_odt().unix_timestamp();
    check_issued(&issued.certificate_chain_pem, &bundle, WORKLOAD, now);

    if tool_available("openssl") {
        let dir = tempfile::tempdir().unwrap();
        let (leaf, rest) = issued
            .certificate_chain_pem
            .split_once("-----END CERTIFICATE-----\n")
            .unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let leaf = write("leaf.pem", &format!("{leaf}-----END CERTIFICATE-----\n"));
        let untrusted = write("untrusted.pem", rest);
        let root = write("root.pem", &server.pki.root.cert_pem);
        let verify = |extra: &[&std::path::Path]| {
            Command::new("openssl")
                .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
                .arg(&root)
                .args(
                    extra
                        .iter()
                        .flat_map(|p| [std::ffi::OsStr::new("-untrusted"), p.as_os_str()]),
                )
                .arg(&leaf)
                .output()
                .unwrap()
        };
        let out = verify(&[&untrusted]);
        assert!(out.status.success(), "{out:?}");
        assert!(
            !verify(&[]).status.success(),
            "not without the intermediate"
        );
    }

    // The workload calls with its chain, and with its certificate alone: the listener checks
    // both up to the root through the issuing CA it knows.
    let key_pem = key.serialize_pem();
    for (what, cert_pem) in [
        ("chain", issued.certificate_chain_pem.clone()),
        ("leaf only", pem_of(&chain[0])),
    ] {
        let workload = server.client_with(&cert_pem, &key_pem).await.unwrap();
        let status = workload.check_status(vec![issued.serial.clone()]).await;
        assert!(status.is_ok(), "{what}: {status:?}");
    }
    server.shutdown().await;
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}
