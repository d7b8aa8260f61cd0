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

    // A rotation inside the token: a second key pair under its own label, its CA (under the
    // same root) prepared by one custodian, approved by another, activated once published.
    let mut next_config = config.clone();
    next_config.key_label = "issuing-ca-2".into();
    let (next_key, generated) = Pkcs11Key::open_or_generate(&next_config).unwrap();
    assert!(generated);
    let next = mintgate_ca::CertAndKey {
        cert_pem: mintgate_ca::dev_successor_ca(&server.pki.root, "Token Issuing CA 2", &next_key)
            .unwrap(),
        key_pem: String::new(),
    };
    crate::rotation::prepare(&server, &next, "issuing-ca-2").await;
    server
        .clock
        .advance(mintgate_domain::authority::DEFAULT_PUBLISH);
    let next_id = crate::rotation::key_id_of(&next.cert_pem);
    let activate = crate::rotation::propose(
        &server,
        "alice",
        crate::rotation::step("hsm-activate", v1::CaAction::Activate, &next_id),
    )
    .await;
    crate::governance::approve(&mut server.admin_as("bob").await, &activate.id)
        .await
        .unwrap();
    let now = server.clock.now_odt().unix_timestamp();
    let (csr_pem, _) = mintgate_tests::csr::csr(WORKLOAD, &[]);
    let issued = server
        .node()
        .await
        .enroll(crate::issuance::enroll_request("hsm-2", &csr_pem))
        .await
        .unwrap();
    mintgate_tests::csr::check_issued(&issued.certificate_chain_pem, &next.cert_pem, WORKLOAD, now);
    let (status, crl) = server.http_get(&format!("/crl/{next_id}")).await;
    assert_eq!(status, 200);
    mintgate_ca::verify_crl(next.cert_pem.as_bytes(), &crl).unwrap();
    server.shutdown().await;
}

mintgate_ca::softhsm_test! {
    fn a_token_serve_cannot_use_stops_it_with_64_naming_why_and_never_the_pin(hsm) {
        let config = hsm.token("serve-token", "issuing-ca").unwrap();
        let (key, _) = Pkcs11Key::open_or_generate(&config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Not dev material (that is refused before the key is looked at): a root of its own and
        // an issuing CA for the token's key under it.
        let ca_params = |cn: &str| {
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            params
        };
        let root_key = rcgen::KeyPair::generate().unwrap();
        let root_params = ca_params("Test Root");
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&root_params, &root_key);
        let issuing = ca_params("Test Issuing CA").signed_by(&key, &issuer).unwrap();
        let ca_pem = format!("{}{}", issuing.pem(), root.pem());
        let policy = mintgate_domain::policy::PolicySource::dev();
        std::fs::create_dir(dir.path().join("policy")).unwrap();
        std::fs::write(dir.path().join("policy/schema.cedarschema"), &policy.schema).unwrap();
        for file in &policy.files {
            std::fs::write(dir.path().join("policy").join(&file.name), &file.text).unwrap();
        }
        // The server's certificate and key are read after the CA's key: any will do here.
        for (name, text) in [
            ("ca.pem", ca_pem.clone()),
            ("server.pem", root.pem()),
            ("server.key", root_key.serialize_pem()),
            ("bootstrap.pem", root.pem()),
            ("join.key", format!("{}\n", "ab".repeat(32))),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let serve = |token: &str, pin: &str| {
            let toml = format!(
                "trust_domain = \"{}\"\ndatabase_url = \"sqlite://t.db?mode=rwc\"\n\
                 grpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\npolicy_dir = \"policy\"\n\
                 join_token_secret_file = \"join.key\"\n[tls]\nserver_cert = \"server.pem\"\n\
                 server_key = \"server.key\"\n[trust]\nbootstrap_cas = [\"bootstrap.pem\"]\n\
                 [ca]\nbackend = \"pkcs11\"\ncert = \"ca.pem\"\n[ca.pkcs11]\nmodule = \"{}\"\n\
                 token_label = \"{token}\"\nkey_label = \"issuing-ca\"\npin_env = \"TEST_CA_PIN\"\n",
                mintgate_tests::TRUST_DOMAIN,
                config.module.display(),
            );
            std::fs::write(dir.path().join("mintgate.toml"), toml).unwrap();
            Command::new(mintgate_tests::mintgate_bin())
                .args(["serve", "--config", "mintgate.toml"])
                .env("TEST_CA_PIN", pin)
                .current_dir(dir.path())
                .output()
                .unwrap()
        };
        let out = serve("no-such-token", mintgate_ca::softhsm::USER_PIN);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains("PKCS11_TOKEN_NOT_FOUND") && err.contains("no-such-token"), "{err}");

        let wrong_pin = "7777-not-the-pin";
        let out = serve("serve-token", wrong_pin);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(64), "{all}");
        assert!(all.contains("PKCS11_PIN_INCORRECT") && all.contains("serve-token"), "{all}");
        assert!(!all.contains(wrong_pin), "the PIN is never printed: {all}");
        assert!(!dir.path().join("t.db").exists(), "nothing was started");
    }
}
