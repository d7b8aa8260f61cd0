//! Checks by tools we did not write: openssl makes the CSR and verifies the chain and the CRL,
//! pkilint lints the certificate and the CRL, grpcurl lists, describes and calls through
//! reflection.

use std::path::Path;
use std::process::{Command, Output};

use mintgate_domain::TrustDomain;
use mintgate_domain::ports::AuditSigner as _;
use mintgate_sdk::v1;
use mintgate_tests::csr::{Expected, check_issued_as};
use mintgate_tests::{Backend, TRUST_DOMAIN, TestServer, tool_available};

use crate::issuance::WORKLOAD;
use crate::revocation::{enroll, revoke_request};

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

/// One ERROR or FATAL finding of a pkilint linter.
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

/// Runs a pkilint linter (`lint_pkix_cert lint`, `lint_crl lint ...`) on one document and
/// returns its ERROR and FATAL findings. Its exit status is the number of findings at or above
/// the threshold, so it must match.
fn pkilint_errors(linter: &[&str], path: &Path) -> Vec<Finding> {
    let out = Command::new(linter[0])
        .args(&linter[1..])
        .args(["--severity", "ERROR", "--format", "JSON"])
        .arg(path)
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
            service_account_token: String::new(),
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
            let errors = pkilint_errors(&["lint_pkix_cert", "lint"], Path::new(&leaf));
            let unexpected: Vec<&Finding> = errors.iter().filter(|f| !f.is_spiffe_uri()).collect();
            assert!(
                unexpected.is_empty(),
                "pkilint found errors in the {name} certificate: {unexpected:#?}"
            );
        }
    }
    server.shutdown().await;
}

/// A workload certificate issued through the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_verifies_and_pkilint_accepts_the_crl() {
    if !tool_available("openssl") {
        return;
    }
    let lint = tool_available("lint_crl");
    let server = TestServer::spawn(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &server.pki.ca.cert_pem);
    let web = enroll(&server, WORKLOAD, "web").await;
    let db = enroll(&server, "spiffe://dev.mintgate.local/workload/db", "db").await;
    let empty = fetch_crl(&server, dir.path(), "empty.der").await;

    // An operator revokes one for a key compromise; the other revokes itself, reason unspecified.
    let reason = v1::RevocationReason::KeyCompromise;
    (server.admin_revocation().await)
        .revoke(revoke_request("r-web", &web.serial, reason))
        .await
        .unwrap();
    let reason = v1::RevocationReason::Unspecified;
    (server.revocation_as(&db.chain_pem, &db.key_pem).await)
        .revoke(revoke_request("r-db", &db.serial, reason))
        .await
        .unwrap();
    let crl = fetch_crl(&server, dir.path(), "crl.der").await;

    let openssl_crl = |file: &Path| {
        let mut cmd = Command::new("openssl");
        cmd.args(["crl", "-inform", "DER", "-noout", "-in"])
            .arg(file);
        cmd
    };
    // openssl 3.0 exits 0 even when it prints "verify failure": read what it says.
    for file in [&empty, &crl] {
        let out = run(openssl_crl(file).args(["-CAfile", &ca]));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "verify OK\n");
    }
    // A CA of the same name with another key.
    let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
    let impostor = mintgate_ca::generate_pki(&td, server.clock.now_odt()).unwrap();
    let impostor = write(dir.path(), "impostor.pem", &impostor.ca.cert_pem);
    let out = openssl_crl(&crl)
        .args(["-CAfile", &impostor])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "verify failure\n");

    // Exactly the two serials; the unspecified reason is left out, as RFC 5280 5.3.1 asks.
    let text = String::from_utf8(run(openssl_crl(&crl).arg("-text")).stdout).unwrap();
    let mut listed = revoked_entries(&text);
    listed.sort();
    let mut want = vec![
        (hex_number(&web.serial), Some("Key Compromise".to_owned())),
        (hex_number(&db.serial), None),
    ];
    want.sort();
    assert_eq!(listed, want, "{text}");

    if lint {
        // A CRL (not an ARL) against RFC 5280 (BR is the CA/Browser Forum's, for public TLS
        // CAs); pkilint detects DER.
        let linter = ["lint_crl", "lint", "--type", "CRL", "--profile", "PKIX"];
        for file in [&empty, &crl] {
            let errors = pkilint_errors(&linter, file);
            assert!(
                errors.is_empty(),
                "pkilint found errors in {file:?}: {errors:#?}"
            );
        }
    }
    server.shutdown().await;
}

async fn fetch_crl(server: &TestServer, dir: &Path, name: &str) -> std::path::PathBuf {
    let (code, der) = server.http_get("/crl").await;
    assert_eq!(code, 200);
    let path = dir.join(name);
    std::fs::write(&path, der).unwrap();
    path
}

/// A hex serial as a comparable number: lowercase, no leading zeros.
fn hex_number(serial: &str) -> String {
    serial.to_lowercase().trim_start_matches('0').to_owned()
}

/// (serial, reason) of each entry `openssl crl -text` prints.
fn revoked_entries(text: &str) -> Vec<(String, Option<String>)> {
    let mut entries: Vec<(String, Option<String>)> = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if let Some(serial) = line.strip_prefix("Serial Number: ") {
            entries.push((hex_number(serial), None));
        } else if line.starts_with("X509v3 CRL Reason Code:") {
            entries.last_mut().unwrap().1 = lines.next().map(str::to_owned);
        }
    }
    entries
}

/// grpcurl holding the dev operator's certificate, aimed at the server.
pub(crate) struct Grpcurl {
    tls: Vec<String>,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Grpcurl {
    pub(crate) fn admin(server: &TestServer) -> Self {
        Self::holding(
            server,
            &server.pki.admin.cert_pem,
            &server.pki.admin.key_pem,
        )
    }

    /// grpcurl holding `cert_pem`/`key_pem`.
    pub(crate) fn holding(server: &TestServer, cert_pem: &str, key_pem: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pem = |name: &str, text: &str| write(dir.path(), name, text);
        let tls = vec![
            "-cacert".into(),
            pem("ca.pem", &server.pki.ca.cert_pem),
            "-cert".into(),
            pem("client.pem", cert_pem),
            "-key".into(),
            pem("client.key", key_pem),
        ];
        Self {
            tls,
            addr: server.grpc_addr.to_string(),
            _dir: dir,
        }
    }

    /// `grpcurl <flags> <address> <what>`.
    pub(crate) fn call(&self, flags: &[&str], what: &[&str]) -> Output {
        Command::new("grpcurl")
            .args(&self.tls)
            .args(flags)
            .arg(&self.addr)
            .args(what)
            .output()
            .unwrap()
    }

    /// Calls `method` with the JSON `body` and returns the JSON messages it printed.
    pub(crate) fn json(
        &self,
        flags: &[&str],
        body: &str,
        method: &str,
    ) -> (Output, Vec<serde_json::Value>) {
        let out = self.call(&[flags, &["-d", body]].concat(), &[method]);
        let messages = serde_json::Deserializer::from_slice(&out.stdout)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{method} printed no JSON ({e}): {out:?}"));
        (out, messages)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_through_reflection() {
    if !tool_available("grpcurl") {
        return;
    }
    let server = TestServer::spawn(Backend::Sqlite).await;
    let grpcurl = Grpcurl::admin(&server);
    let list = String::from_utf8(grpcurl.call(&[], &["list"]).stdout).unwrap();
    for service in [
        "mintgate.v1.Provisioning",
        "mintgate.v1.Admin",
        "mintgate.v1.Revocation",
        "grpc.health.v1.Health",
    ] {
        assert!(list.contains(service), "{list}");
    }
    let describe = |name: &str| String::from_utf8(grpcurl.call(&[], &["describe", name]).stdout);
    let described = describe("mintgate.v1.EnrollRequest").unwrap();
    assert!(
        described.contains("idempotency key"),
        "field docs reach describe:\n{described}"
    );
    // Every field of RevokeRequest comes with its comment.
    let described = describe("mintgate.v1.RevokeRequest").unwrap();
    let lines: Vec<&str> = described.lines().map(str::trim).collect();
    for field in [" request_id = ", " serial = ", " reason = "] {
        let at = lines.iter().position(|l| l.contains(field));
        assert!(
            at.is_some_and(|i| i > 0 && lines[i - 1].starts_with("// ")),
            "{field} is described with its comment:\n{described}"
        );
    }

    let body =
        r#"{"request_id":"grpcurl-1","spiffe_id":"spiffe://dev.mintgate.local/joined/demo"}"#;
    let out = grpcurl.call(&["-d", body], &["mintgate.v1.Admin/CreateJoinToken"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("\"token\""),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Errors carry their reason where grpcurl can show it.
    let out = grpcurl.call(
        &["-d", r#"{"request_id":"bad","csr":"aGVsbG8="}"#],
        &["mintgate.v1.Provisioning/Enroll"],
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("InvalidArgument") && text.contains("CSR_MALFORMED"),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_revokes_watches_and_checks_status() {
    if !tool_available("grpcurl") {
        return;
    }
    let server = TestServer::spawn(Backend::Sqlite).await;
    let web = enroll(&server, WORKLOAD, "web").await;
    let grpcurl = Grpcurl::admin(&server);

    let body = format!(
        r#"{{"request_id":"grpcurl-revoke","serial":"{}","reason":"REVOCATION_REASON_KEY_COMPROMISE"}}"#,
        web.serial
    );
    let (out, answer) = grpcurl.json(&[], &body, "mintgate.v1.Revocation/Revoke");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(answer.len(), 1, "{answer:?}");
    let event = &answer[0]["revocation"];
    assert_eq!(event["seq"], "1", "int64 is a JSON string: {event}");
    assert_eq!(event["serial"], web.serial.as_str());
    assert_eq!(event["spiffeId"], WORKLOAD);
    assert_eq!(event["reason"], "REVOCATION_REASON_KEY_COMPROMISE");

    // The event, then a heartbeat at head 1; the feed stays open until grpcurl's deadline.
    let (out, feed) = grpcurl.json(
        &["-max-time", "3"],
        r#"{"cursor":0}"#,
        "mintgate.v1.Revocation/WatchRevocations",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DeadlineExceeded"), "{out:?}");
    assert!(feed.len() >= 2, "{feed:?}");
    assert_eq!(feed[0], serde_json::json!({ "event": event }));
    assert_eq!(feed[1]["heartbeat"]["headSeq"], "1");

    let body = format!(r#"{{"serials":["{}"]}}"#, web.serial.to_uppercase());
    let (out, report) = grpcurl.json(&[], &body, "mintgate.v1.Revocation/CheckStatus");
    assert!(out.status.success(), "{out:?}");
    let status = &report[0]["statuses"][0];
    assert_eq!(status["status"], "CERTIFICATE_STATUS_REVOKED", "{report:?}");
    assert_eq!(&status["revocation"], event);
    assert_eq!(report[0]["headSeq"], "1");

    // The revoked certificate is refused. grpcurl (grpc-go) does not say why: it treats the
    // alert that follows its TLS 1.3 handshake as a transient failure and redials until its
    // -connect-timeout (10 s unless set), then reports "context deadline exceeded" (see the
    // README's table of what each client shows).
    let revoked = Grpcurl::holding(&server, &web.chain_pem, &web.key_pem);
    let started = std::time::Instant::now();
    let out = revoked.call(&["-connect-timeout", "2"], &["list"]);
    let elapsed = started.elapsed();
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Failed to dial target host"), "{stderr}");
    assert!(elapsed < std::time::Duration::from_secs(5), "{elapsed:?}");
    server.shutdown().await;
}

/// The README's "change the policy with two people", through grpcurl: alice proposes, the
/// diff is shown, alice cannot approve her own proposal, bob approves and the new version is
/// active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_changes_the_policy_with_two_people() {
    if !tool_available("grpcurl") {
        return;
    }
    let server = TestServer::spawn(Backend::Sqlite).await;
    let alice = Grpcurl::holding(
        &server,
        &server.pki.alice.cert_pem,
        &server.pki.alice.key_pem,
    );
    let bob = Grpcurl::holding(&server, &server.pki.bob.cert_pem, &server.pki.bob.key_pem);
    let dev = mintgate_domain::policy::PolicySource::dev();
    let mut files: Vec<serde_json::Value> = dev
        .files
        .iter()
        .map(|f| serde_json::json!({"name": f.name, "text": f.text}))
        .collect();
    files.push(serde_json::json!({
        "name": "no-db.cedar",
        "text": "@id(\"no-db\")\nforbid (principal, action, resource is SpiffeId) when { resource.path like \"/workload/db/*\" };\n",
    }));
    let body = serde_json::json!({
        "request_id": "pol-1", "schema": dev.schema, "files": files, "label": "CHG-42",
    })
    .to_string();
    let (out, proposed) = alice.json(&[], &body, "mintgate.v1.Admin/ProposePolicy");
    assert!(out.status.success(), "{out:?}");
    let proposal = &proposed[0]["proposal"];
    assert_eq!(proposal["state"], "PROPOSAL_STATE_OPEN");
    let id = proposal["id"].as_str().unwrap().to_owned();
    let by_id = format!(r#"{{"proposal_id":"{id}"}}"#);

    let (_, shown) = bob.json(&[], &by_id, "mintgate.v1.Admin/GetProposal");
    let diff = shown[0]["diff"].as_str().unwrap();
    assert!(diff.contains("+@id(\"no-db\")"), "{diff}");

    let out = alice.call(&["-d", &by_id], &["mintgate.v1.Admin/ApproveProposal"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("PermissionDenied") && text.contains("SELF_APPROVAL"),
        "{text}"
    );

    let (out, approved) = bob.json(&[], &by_id, "mintgate.v1.Admin/ApproveProposal");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(approved[0]["proposal"]["state"], "PROPOSAL_STATE_APPLIED");
    let (_, governance) = bob.json(&[], "{}", "mintgate.v1.Admin/GetGovernance");
    assert_eq!(governance[0]["policyVersion"], proposal["policyVersion"]);
    assert_eq!(governance[0]["policyLabel"], "CHG-42");
    server.shutdown().await;
}

/// Audit keys made by `openssl genpkey` (Ed25519 and P-256) at test time load, and the public
/// key we publish is byte for byte what `openssl pkey -pubout` prints for them.
#[test]
fn openssl_audit_keys_load_and_publish_what_openssl_prints() {
    if !tool_available("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let algorithms: [&[&str]; 2] = [
        &["-algorithm", "ed25519"],
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ];
    for (i, algorithm) in algorithms.into_iter().enumerate() {
        let key = dir.path().join(format!("audit-{i}.key"));
        run(Command::new("openssl")
            .arg("genpkey")
            .args(algorithm)
            .arg("-out")
            .arg(&key));
        let public = run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key))
        .stdout;
        let public = String::from_utf8(public).unwrap();
        let signer =
            mintgate_ca::FileAuditSigner::from_pem(&std::fs::read_to_string(&key).unwrap())
                .unwrap();
        assert_eq!(mintgate_ca::audit_key_pem(signer.public_key()), public);
        let sig = signer.sign(b"m").unwrap();
        assert!(mintgate_ca::verify_signature(
            &mintgate_ca::audit_key_from_pem(&public).unwrap(),
            b"m",
            &sig
        ));
    }
}
