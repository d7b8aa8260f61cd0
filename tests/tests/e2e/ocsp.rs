//! OCSP at `/ocsp` end to end: the real `openssl ocsp` asks about a certificate before and after
//! its revocation (POST, with and without a nonce, SHA-1 and SHA-256 CertIDs) and verifies every
//! answer against the CA; a GET, a serial never issued, another issuer's CertID and malformed
//! requests get what RFC 6960 says.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mintgate_domain::TrustDomain;
use mintgate_sdk::v1;
use mintgate_tests::{Backend, TRUST_DOMAIN, TestServer, both_backends, tool_available};

use crate::issuance::WORKLOAD;
use crate::revocation::{enroll, revoke_request};

/// An unsigned OCSPResponse with responseStatus malformedRequest (1): SEQUENCE { ENUMERATED 1 }.
const MALFORMED_REQUEST: [u8; 5] = [0x30, 0x03, 0x0a, 0x01, 0x01];

both_backends!(
    openssl_ocsp_says_good_then_revoked_with_the_reason,
    good_then_revoked
);

async fn good_then_revoked(backend: Backend) {
    if !tool_available("openssl") {
        return;
    }
    let server = TestServer::spawn(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(dir.path(), &server, &enroll(&server, WORKLOAD, "web").await);
    let url = format!("http://{}/ocsp", server.http_addr);
    // openssl's defaults (SHA-1 CertID, a nonce), no nonce, and a SHA-256 CertID.
    let variants: [&[&str]; 3] = [&[], &["-no_nonce"], &["-sha256"]];
    for extra in variants {
        let out = files.ocsp(&["-url", &url], extra);
        assert_verified(&out, &files.leaf, "good");
        assert!(!out.contains("WARNING"), "{extra:?}: {out}");
        assert!(!out.contains("Reason"), "{extra:?}: {out}");
    }

    let serial = files.serial.clone();
    let reason = v1::RevocationReason::KeyCompromise;
    (server.admin_revocation().await)
        .revoke(revoke_request("r-web", &serial, reason))
        .await
        .unwrap();
    for extra in variants {
        let out = files.ocsp(&["-url", &url], extra);
        assert_verified(&out, &files.leaf, "revoked");
        assert!(out.contains("Reason: keyCompromise"), "{extra:?}: {out}");
        assert!(out.contains("Revocation Time: "), "{extra:?}: {out}");
        assert!(!out.contains("WARNING"), "{extra:?}: {out}");
    }
    server.shutdown().await;
}

/// The GET form (RFC 6960 Appendix A): the DER request base64-encoded, then URL-encoded, in the
/// path. openssl writes the request and checks the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_request_is_answered_like_a_post() {
    if !tool_available("openssl") {
        return;
    }
    let server = TestServer::spawn(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(dir.path(), &server, &enroll(&server, WORKLOAD, "web").await);
    let request = dir.path().join("req.der");
    let reqout = request.display().to_string();
    files.ocsp(&["-reqout", &reqout], &[]);
    let encoded = url_encode(&base64(&std::fs::read(&request).unwrap()));
    let (status, body) = server.http_get(&format!("/ocsp/{encoded}")).await;
    assert_eq!(status, 200);
    let response = dir.path().join("resp.der");
    std::fs::write(&response, body).unwrap();
    // The request carries a nonce: -reqin has openssl check that the response echoes it.
    let respin = response.display().to_string();
    let out = run_ocsp(&[
        "-issuer", &files.ca, "-CAfile", &files.ca, "-reqin", &reqout, "-respin", &respin,
    ]);
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(!out.contains("WARNING"), "{out}");
    // Status lines are printed for -cert only, so ask again about the same certificate.
    let out = files.ocsp(&["-respin", &respin], &["-no_nonce"]);
    assert_verified(&out, &files.leaf, "good");
    server.shutdown().await;
}

/// A serial Mintgate never issued is unknown (in a verified response); a CertID naming a CA of
/// the same name with another key is not ours to answer: unauthorized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_never_issued_is_unknown_and_another_issuer_unauthorized() {
    if !tool_available("openssl") {
        return;
    }
    let server = TestServer::spawn(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(dir.path(), &server, &enroll(&server, WORKLOAD, "web").await);
    let url = format!("http://{}/ocsp", server.http_addr);
    let never = "0x0102030405060708090a0b0c0d0e0f1011";
    let out = run_ocsp(&[
        "-issuer", &files.ca, "-CAfile", &files.ca, "-serial", never, "-url", &url,
    ]);
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains(&format!("{never}: unknown")), "{out}");

    let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
    let impostor = mintgate_ca::generate_pki(&td, server.clock.now_odt()).unwrap();
    let impostor = write(dir.path(), "impostor.pem", &impostor.ca.cert_pem);
    let out = run_ocsp(&[
        "-issuer",
        &impostor,
        "-CAfile",
        &files.ca,
        "-cert",
        &files.leaf,
        "-url",
        &url,
    ]);
    assert!(out.contains("Responder Error: unauthorized (6)"), "{out}");
    server.shutdown().await;
}

/// Past its notAfter (on the injected clock) a certificate is unknown, never good: Mintgate no
/// longer vouches for it, and its revocation, had there been one, may be pruned by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_unknown() {
    if !tool_available("openssl") {
        return;
    }
    let server = TestServer::spawn(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(dir.path(), &server, &enroll(&server, WORKLOAD, "web").await);
    let url = format!("http://{}/ocsp", server.http_addr);
    server.clock.advance(Duration::from_secs(31 * 24 * 3600));
    // The server's clock is now a month ahead of openssl's: widen the validity tolerance.
    let out = files.ocsp(&["-url", &url, "-validity_period", "3000000"], &[]);
    assert_verified(&out, &files.leaf, "unknown");
    server.shutdown().await;
}

/// Whatever is not an OCSP request gets malformedRequest, never an HTTP error: garbage, an
/// empty body, a body over the limit, a DER value that is not a request, bad base64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_malformed_request() {
    let server = TestServer::spawn(Backend::Sqlite).await;
    let ocsp_request = "application/ocsp-request";
    let bodies: [(&str, Vec<u8>); 4] = [
        ("garbage", b"hello, responder".to_vec()),
        ("empty", Vec::new()),
        ("over the limit", vec![0x30; 64 * 1024]),
        // A valid DER SEQUENCE holding an empty SEQUENCE: no tbsRequest.
        ("not a request", vec![0x30, 0x02, 0x30, 0x00]),
    ];
    for (what, body) in bodies {
        let (status, answer) = server.http_post("/ocsp", ocsp_request, &body).await;
        assert_eq!(
            (status, answer.as_slice()),
            (200, &MALFORMED_REQUEST[..]),
            "{what}"
        );
    }
    for path in [
        "/ocsp/not%20base64!",
        "/ocsp/bm90IGRlcg%3D%3D",
        "/ocsp/MAIwAA",
    ] {
        let (status, answer) = server.http_get(path).await;
        assert_eq!(
            (status, answer.as_slice()),
            (200, &MALFORMED_REQUEST[..]),
            "{path}"
        );
    }
    // The responder is still there for well-formed requests.
    assert_eq!(server.http_get("/healthz").await.0, 200);
    server.shutdown().await;
}

/// The files `openssl ocsp` reads: the CA and one workload's leaf certificate.
pub(crate) struct Files {
    pub(crate) ca: String,
    pub(crate) leaf: String,
    pub(crate) serial: String,
}

impl Files {
    pub(crate) fn new(
        dir: &Path,
        server: &TestServer,
        workload: &crate::revocation::Workload,
    ) -> Self {
        let leaf = workload
            .chain_pem
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap();
        Self {
            ca: write(dir, "ca.pem", &server.pki.ca.cert_pem),
            leaf: write(dir, "leaf.pem", leaf),
            serial: workload.serial.clone(),
        }
    }

    /// `openssl ocsp` `extra` (a digest must come before -cert) `-issuer ca.pem -cert leaf.pem
    /// -CAfile ca.pem` `args`.
    pub(crate) fn ocsp(&self, args: &[&str], extra: &[&str]) -> String {
        let base = [
            "-issuer", &self.ca, "-cert", &self.leaf, "-CAfile", &self.ca,
        ];
        run_ocsp(&[extra, &base[..], args].concat())
    }
}

/// Runs `openssl ocsp` with `args`: what it printed, stdout then stderr.
fn run_ocsp(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("ocsp")
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// openssl verified the response against the CA and reports `status` for the leaf.
pub(crate) fn assert_verified(out: &str, leaf: &str, status: &str) {
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains(&format!("{leaf}: {status}\n")), "{out}");
    assert!(out.contains("This Update: "), "{out}");
    assert!(out.contains("Next Update: "), "{out}");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn base64(der: &[u8]) -> String {
    let out = Command::new("openssl")
        .args(["base64", "-A"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(der)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Percent-encodes the characters of standard base64 that mean something in a URL path.
fn url_encode(b64: &str) -> String {
    b64.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}
