//! An issuing CA near or past its end: lifetimes are cut to its notAfter and the caller is told;
//! within the minimum lifetime of its end nothing is issued (UNAVAILABLE / CA_EXPIRING, nothing
//! recorded, so the request id works once the CA is replaced), `/readyz` fails, and a server
//! with such a CA does not start.

use std::time::Duration;

use mintgate_domain::audit::verify_chain;
use mintgate_domain::lifetime::DEFAULT_MIN_LIFETIME;
use mintgate_domain::store::CertificateStore;
use mintgate_sdk::v1;
use mintgate_server::evidence::{ExportRequest, Trust, export_to_dir, verify};
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::{Backend, Options, TestServer, both_backends};
use tonic::Code;
use tonic_types::StatusExt;
use x509_parser::pem::parse_x509_pem;

use crate::issuance::{WORKLOAD, enroll_request};

/// How long the test's issuing CA has left when the server starts.
const CA_LEFT: Duration = Duration::from_secs(20 * 60);

both_backends!(
    near_its_end_the_ca_cuts_lifetimes_then_issues_nothing_until_replaced,
    ca_end
);
async fn ca_end(backend: Backend) {
    let server = TestServer::spawn_with(Options {
        ca_expires_in: Some(CA_LEFT),
        ..Options::new(backend)
    })
    .await;
    let ca_not_after = not_after_of(&server.pki.ca.cert_pem);
    let now = server.clock.now_odt().unix_timestamp();
    assert_eq!(ca_not_after - now, CA_LEFT.as_secs() as i64);
    assert_eq!(server.http_get("/readyz").await.0, 200);
    let node = server.node().await;

    // The policy's hour is cut to the CA's last 20 minutes, and the caller is told.
    let (csr_pem, key) = csr(WORKLOAD, &[]);
    let cut = node.enroll(enroll_request("cut", &csr_pem)).await.unwrap();
    let checked = check_issued(
        &cut.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        now,
    );
    assert_eq!(checked.not_after, ca_not_after);
    assert_eq!(cut.not_after.unwrap().seconds, ca_not_after);
    assert_eq!(cut.clamp_reason(), v1::ClampReason::CaNotAfter);
    assert_eq!(
        cut.granted_ttl,
        Some(mintgate_sdk::seconds(CA_LEFT.as_secs() as i64))
    );
    let renew_after = cut.renew_after.unwrap().seconds;
    assert!(
        renew_after > now && renew_after < ca_not_after,
        "{renew_after}"
    );
    // A retry tells the same story.
    let again = node.enroll(enroll_request("cut", &csr_pem)).await.unwrap();
    assert_eq!(
        (again.granted_ttl, again.clamp_reason()),
        (cut.granted_ttl, cut.clamp_reason())
    );

    // What the CA's end does not reach is not cut.
    let (short_csr, _) = csr(WORKLOAD, &[]);
    let mut request = enroll_request("short", &short_csr);
    request.ttl = Some(mintgate_sdk::seconds(600));
    let short = node.enroll(request).await.unwrap();
    assert_eq!(short.clamp_reason(), v1::ClampReason::None);
    assert_eq!(short.granted_ttl, Some(mintgate_sdk::seconds(600)));
    assert_eq!(short.not_after.unwrap().seconds, now + 600);

    // 4 minutes left, less than the 5-minute minimum: not ready, and nothing is issued.
    server.clock.advance(CA_LEFT - Duration::from_secs(4 * 60));
    assert!(DEFAULT_MIN_LIFETIME > Duration::from_secs(4 * 60));
    let (status, body) = server.http_get("/readyz").await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("issuing CA expires at"), "{body}");
    let before = server.stored_rows().await;

    let (late_csr, _) = csr(WORKLOAD, &[]);
    let status = server
        .node_provisioning()
        .await
        .enroll(enroll_request("late", &late_csr))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("CA_EXPIRING", "mintgate")
    );
    assert_eq!(
        info.metadata.get("fault").map(String::as_str),
        Some("system")
    );
    // Asking again is the same answer, not INTERNAL and not REQUEST_CLOSED.
    let err = node
        .enroll(enroll_request("late", &late_csr))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str(), err.is_retryable()),
        (Code::Unavailable, "CA_EXPIRING", true)
    );
    // A workload renewing is refused alike.
    let workload = server
        .client_with(&cut.certificate_chain_pem, &key.serialize_pem())
        .await
        .unwrap();
    let (renew_csr, _) = csr(WORKLOAD, &[]);
    let err = workload
        .renew(v1::RenewRequest {
            request_id: "renew-late".into(),
            csr: renew_csr.into_bytes(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (Code::Unavailable, "CA_EXPIRING")
    );

    // Past the CA's notAfter (and its 30 s backdate) it is still CA_EXPIRING, never INTERNAL.
    server.clock.advance(Duration::from_secs(5 * 60));
    let err = node
        .enroll(enroll_request("late", &late_csr))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (Code::Unavailable, "CA_EXPIRING")
    );
    assert!(err.message.contains("expired at"), "{}", err.message);
    let (status, body) = server.http_get("/readyz").await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));

    // Nothing of the refused requests was recorded, as issued or FAILED or at all.
    assert_eq!(server.stored_rows().await, before);
    let err = node.get_request("late").await.unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    let chain = server.store().audit_chain().await.unwrap();
    assert!(verify_chain(chain).is_ok());

    // The operator replaces the CA; the same request id now gets a whole certificate from it.
    let mut stopped = server.stop().await;
    stopped.replace_issuing_ca();
    let server = stopped.start().await;
    assert_eq!(server.http_get("/readyz").await.0, 200);
    // The registry's ACTIVE CA had run out, so the one now in [ca] was adopted, audited.
    let chain = server.store().audit_chain().await.unwrap();
    let adopted = chain.iter().rev().find(|e| e.event.action == "ca.adopted");
    assert!(
        adopted.is_some_and(|e| e.event.actor == "bootstrap"),
        "{chain:?}"
    );
    let now = server.clock.now_odt().unix_timestamp();
    let issued = server
        .node()
        .await
        .enroll(enroll_request("late", &late_csr))
        .await
        .unwrap();
    let checked = check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        now,
    );
    assert_eq!(checked.not_after, now + 3600);
    assert_eq!(issued.clamp_reason(), v1::ClampReason::None);
    assert_eq!(issued.granted_ttl, Some(mintgate_sdk::seconds(3600)));
    let status = server.node().await.get_request("late").await.unwrap();
    assert_eq!(status.state(), v1::RequestState::Issued);
    let chain = server.store().audit_chain().await.unwrap();
    assert!(verify_chain(chain).is_ok());

    // The adoption and the CA it replaced name no proposal, and the evidence still verifies:
    // the audit chain holds the `ca.adopted` event.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("evidence");
    let now = server.clock.now_odt();
    let request = ExportRequest {
        since: now - time::Duration::hours(2),
        until: now + time::Duration::hours(1),
        ca_cert: None,
        crl: None,
        now,
    };
    export_to_dir(server.store(), &request, &dir).await.unwrap();
    assert_eq!(verify(&dir, Trust::Exported).unwrap().authorities, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_ca_is_expired_or_expiring_does_not_start() {
    // Within the minimum lifetime of its end.
    let err = TestServer::try_spawn_with(Options {
        ca_expires_in: Some(Duration::from_secs(120)),
        ..Options::new(Backend::Sqlite)
    })
    .await
    .err()
    .expect("a CA with 2 minutes left is refused");
    assert!(err.is_config());
    let text = err.to_string();
    assert!(
        text.contains("Mintgate Dev Issuing CA")
            && text.contains("expires at")
            && text.contains("ca.min_lifetime_seconds: 300"),
        "{text}"
    );

    // Past its end: a server that ran fine does not come back.
    let server = TestServer::spawn(Backend::Sqlite).await;
    let ca_not_after = not_after_of(&server.pki.ca.cert_pem);
    let stopped = server.stop().await;
    let clock = stopped.clock();
    clock.advance(Duration::from_secs(366 * 86_400));
    let err = stopped
        .try_start()
        .await
        .err()
        .expect("an expired CA is refused");
    assert!(err.is_config());
    let not_after = time::OffsetDateTime::from_unix_timestamp(ca_not_after)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("Mintgate Dev Issuing CA")
            && text.contains(&format!("expired at {not_after}")),
        "{text}"
    );
}

fn not_after_of(cert_pem: &str) -> i64 {
    let (_, pem) = parse_x509_pem(cert_pem.as_bytes()).unwrap();
    pem.parse_x509().unwrap().validity().not_after.timestamp()
}
