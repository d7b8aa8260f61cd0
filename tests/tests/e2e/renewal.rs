//! Renewal refusals: a revoked or expired certificate cannot be renewed (FAILED_PRECONDITION),
//! and nothing is issued for it.

use std::time::Duration;

use mintgate_sdk::{Client, v1};
use mintgate_tests::csr::csr;
use mintgate_tests::{Backend, TestServer, both_backends};
use tonic::Code;

use crate::issuance::{WORKLOAD, enroll_request};

/// Enrolls WORKLOAD through the node and connects with the issued certificate.
async fn enrolled_workload(server: &TestServer) -> (Client, String) {
    let (csr_pem, key) = csr(WORKLOAD, &[]);
    let issued = server
        .node()
        .await
        .enroll(enroll_request("first", &csr_pem))
        .await
        .unwrap();
    let client = server
        .client_with(&issued.certificate_chain_pem, &key.serialize_pem())
        .await
        .unwrap();
    (client, issued.serial)
}

async fn renewal_refused(workload: &Client, request_id: &str, reason: &str) {
    let (new_csr, _) = csr(WORKLOAD, &[]);
    let err = workload
        .renew(v1::RenewRequest {
            request_id: request_id.into(),
            csr: new_csr.into_bytes(),
            ttl: None,
        })
        .await
        .expect_err(reason);
    assert_eq!(
        (err.code, err.reason.as_str()),
        (Code::FailedPrecondition, reason),
        "{}",
        err.message
    );
    let status = workload.get_request(request_id).await.unwrap();
    assert_eq!(status.state(), v1::RequestState::Denied);
    assert_eq!(status.serial, "");
}

both_backends!(a_revoked_certificate_cannot_be_renewed, revoked);
async fn revoked(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let (workload, serial) = enrolled_workload(&server).await;
    // Revocation has no RPC yet; mark the row as a revocation would.
    server
        .store()
        .execute_raw(&format!(
            "UPDATE certificates SET state = 'REVOKED' WHERE serial = '{serial}'"
        ))
        .await
        .unwrap();
    renewal_refused(&workload, "renew-revoked", "CERTIFICATE_REVOKED").await;
    server.shutdown().await;
}

both_backends!(an_expired_certificate_cannot_be_renewed, expired);
async fn expired(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    // The connection is made while the certificate is valid; it then expires under it (a new
    // handshake would be refused outright, see mtls.rs).
    let (workload, _) = enrolled_workload(&server).await;
    // An answer from a handler (NOT_FOUND: "first" is the node's request) proves the server
    // accepted the certificate; with TLS 1.3 the client cannot know that before.
    let err = workload.get_request("first").await.unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    server.clock.advance(Duration::from_secs(3601));
    renewal_refused(&workload, "renew-expired", "CERTIFICATE_EXPIRED").await;
    server.shutdown().await;
}
