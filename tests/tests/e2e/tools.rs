//! Checks by tools we did not write: openssl makes the CSR and verifies the chain, pkilint
//! lints the certificate, grpcurl lists, describes and calls through reflection.

use std::path::Path;
use std::process::{Command, Output};

use mintgate_tests::csr::{Expected, check_issued_as};
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

/// One ERROR or FATAL finding of pkilint's `lint_pkix_cert`.
#[derive(Debug)]
struct Finding {
    node_path: String,
    validator: String,
    code: String,
    message: String,
}

impl Finding {
    /// The one finding we accept: pkilint 0.13 checks URIs with the `validators` package, which
    /// knows no `spiffe` scheme, so it calls every SPIFFE ID (RFC 3986-valid) invalid syntax.
    fn is_spiffe_uri(&self) -> bool {
        self.validator == "GeneralNameUriSyntaxValidator"
            && self.code == "pkix.invalid_uri_syntax"
            && self.node_path.contains(".subjectAltName.")
            && self.node_path.ends_with(".uniformResourceIdentifier")
            && self.message == format!("Invalid URI syntax: \"{WORKLOAD}\"")
    }
}

/// Runs `lint_pkix_cert lint` on one PEM certificate and returns its ERROR and FATAL findings.
/// Its exit status is the number of findings at or above the threshold, so it must match.
fn pkilint_errors(cert_path: &str) -> Vec<Finding> {
    let out = Command::new("lint_pkix_cert")
        .args(["lint", "--severity", "ERROR", "--format", "JSON", cert_path])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "pkilint printed no JSON report ({e}; {:?}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let mut findings = Vec::new();
    for result in report["results"].as_array().unwrap() {
        for finding in result["finding_descriptions"].as_array().unwrap() {
            let severity = text(&finding["severity"]);
            assert!(
                severity == "ERROR" || severity == "FATAL",
                "pkilint reported {severity} despite --severity ERROR: {report}"
            );
            findings.push(Finding {
                node_path: text(&result["node_path"]),
                validator: text(&result["validator"]),
                code: text(&finding["code"]),
                message: text(&finding["message"]),
            });
        }
    }
    assert_eq!(
        out.status.code(),
        Some(findings.len() as i32),
        "pkilint's exit status counts its findings: {report}"
    );
    findings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssl_csr_yields_a_chain_openssl_and_pkilint_accept() {
    if !tool_available("openssl") {
        return;
    }
    let lint = tool_available("lint_pkix_cert");
    let server = TestServer::spawn(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &server.pki.ca.cert_pem);
    // P-256 with the SPIFFE ID only; RSA (keyEncipherment too) with a DNS name as well.
    let cases: [(&str, &[&str], &[&str]); 2] = [
        (
            "p256",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
            &[],
        ),
        (
            "rsa2048",
            &["-newkey", "rsa:2048"],
            &["web.svc.cluster.local"],
        ),
    ];
    for (name, key_args, dns) in cases {
        let key = dir.path().join(format!("{name}.key"));
        let csr = dir.path().join(format!("{name}.csr"));
        let mut san = format!("subjectAltName=URI:{WORKLOAD}");
        for d in dns {
            san.push_str(&format!(",DNS:{d}"));
        }
        run(Command::new("openssl")
            .args(["req", "-new", "-nodes"])
            .args(key_args)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .args(["-subj", "/CN=web", "-addext", &san]));
        let request = mintgate_sdk::v1::EnrollRequest {
            request_id: format!("openssl-{name}"),
            csr: std::fs::read(&csr).unwrap(),
            ttl: None,
            join_token: String::new(),
        };
        let now = server.clock.now_odt().unix_timestamp();
        let issued = server.node().await.enroll(request).await.unwrap();
        check_issued_as(
            &issued.certificate_chain_pem,
            &server.pki.ca.cert_pem,
            &Expected::with_dns(WORKLOAD, dns),
            now,
        );
        let chain = write(
            dir.path(),
            &format!("{name}-chain.pem"),
            &issued.certificate_chain_pem,
        );
        let out = run(Command::new("openssl").args([
            "verify",
            "-CAfile",
            &ca,
            "-purpose",
            "sslclient",
            &chain,
        ]));
        assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));

        if lint {
            let first = issued
                .certificate_chain_pem
                .split_inclusive("-----END CERTIFICATE-----\n")
                .next()
                .unwrap();
            let leaf = write(dir.path(), &format!("{name}-leaf.pem"), first);
            let errors = pkilint_errors(&leaf);
            let unexpected: Vec<&Finding> = errors.iter().filter(|f| !f.is_spiffe_uri()).collect();
            assert!(
                unexpected.is_empty(),
                "pkilint found errors in the {name} certificate: {unexpected:#?}"
            );
        }
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
