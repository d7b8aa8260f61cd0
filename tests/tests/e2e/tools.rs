//! Checks by tools we did not write: openssl makes the CSR and verifies the chain, pkilint
//! lints the certificate, grpcurl lists, describes and calls through reflection.

use std::path::Path;
use std::process::{Command, Output};

use mintgate_tests::{Backend, TestServer, tool_available};

use crate::issuance::WORKLOAD;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssl_csr_yields_a_chain_openssl_and_pkilint_accept() {
    if !tool_available("openssl") {
        return;
    }
    let server = TestServer::spawn(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("w.key");
    let csr = dir.path().join("w.csr");
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .args([
            "-subj",
            "/CN=web",
            "-addext",
            &format!("subjectAltName=URI:{WORKLOAD}"),
        ]));
    let request = mintgate_sdk::v1::EnrollRequest {
        request_id: "openssl-1".into(),
        csr: std::fs::read(&csr).unwrap(),
        ttl: None,
        join_token: String::new(),
    };
    let issued = server.node().await.enroll(request).await.unwrap();
    let ca = write(dir.path(), "ca.pem", &server.pki.ca.cert_pem);
    let leaf = write(dir.path(), "chain.pem", &issued.certificate_chain_pem);
    let out = run(Command::new("openssl").args([
        "verify",
        "-CAfile",
        &ca,
        "-purpose",
        "sslclient",
        &leaf,
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));

    if tool_available("lint_pkix_cert") {
        let first = issued
            .certificate_chain_pem
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap();
        let leaf_only = write(dir.path(), "leaf.pem", first);
        let out = Command::new("lint_pkix_cert")
            .args(["lint", &leaf_only])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("FATAL"))
            .filter(|l| {
                !l.contains("uniformResourceIdentifier") && !l.to_lowercase().contains("uri")
            })
            .collect();
        assert!(errors.is_empty(), "pkilint found errors:\n{text}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_through_reflection() {
    if !tool_available("grpcurl") {
        return;
    }
    let server = TestServer::spawn(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &server.pki.ca.cert_pem);
    let cert = write(dir.path(), "admin.pem", &server.pki.admin.cert_pem);
    let key = write(dir.path(), "admin.key", &server.pki.admin.key_pem);
    let addr = server.grpc_addr.to_string();
    let grpcurl = |args: &[&str]| {
        let mut cmd = Command::new("grpcurl");
        cmd.args(["-cacert", &ca, "-cert", &cert, "-key", &key]);
        cmd.args(args);
        cmd.output().unwrap()
    };
    let list = String::from_utf8(grpcurl(&[&addr, "list"]).stdout).unwrap();
    for service in [
        "mintgate.v1.Provisioning",
        "mintgate.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(list.contains(service), "{list}");
    }
    let described =
        String::from_utf8(grpcurl(&[&addr, "describe", "mintgate.v1.EnrollRequest"]).stdout)
            .unwrap();
    assert!(
        described.contains("idempotency key"),
        "field docs reach describe:\n{described}"
    );

    let body =
        r#"{"request_id":"grpcurl-1","spiffe_id":"spiffe://dev.mintgate.local/joined/demo"}"#;
    let out = grpcurl(&["-d", body, &addr, "mintgate.v1.Admin/CreateJoinToken"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("\"token\""),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Errors carry their reason where grpcurl can show it.
    let out = grpcurl(&[
        "-d",
        r#"{"request_id":"bad","csr":"aGVsbG8="}"#,
        &addr,
        "mintgate.v1.Provisioning/Enroll",
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("InvalidArgument") && text.contains("CSR_MALFORMED"),
        "{text}"
    );
    server.shutdown().await;
}
