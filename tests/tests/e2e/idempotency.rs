//! Idempotency: the same request id and payload gets the same certificate bytes, also after a
//! restart and under 100 concurrent duplicates; a new payload under an old id is refused.

use std::collections::HashSet;

use mintgate_domain::store::CertificateStore;
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::{Backend, TestServer, both_backends};
use tonic::Code;

use crate::issuance::{WORKLOAD, enroll_request};

both_backends!(
    a_retry_gets_the_same_certificate_even_after_a_restart,
    retry_same_answer
);
async fn retry_same_answer(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let now = server.clock.now_odt().unix_timestamp();
    let first = server
        .node()
        .await
        .enroll(enroll_request("same", &csr_pem))
        .await
        .unwrap();
    let again = server
        .node()
        .await
        .enroll(enroll_request("same", &csr_pem))
        .await
        .unwrap();
    let checked = check_issued(
        &first.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        now,
    );
    assert_eq!(checked.serial_hex, first.serial);
    assert_eq!(first.certificate_chain_pem, again.certificate_chain_pem);

    let (other, _) = csr(WORKLOAD, &[]);
    let err = server
        .node()
        .await
        .enroll(enroll_request("same", &other))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED")
    );

    let server = server.restart().await;
    let after = server
        .node()
        .await
        .enroll(enroll_request("same", &csr_pem))
        .await
        .unwrap();
    assert_eq!(first.certificate_chain_pem, after.certificate_chain_pem);
    server.shutdown().await;
}

both_backends!(
    a_hundred_concurrent_duplicates_make_one_certificate,
    concurrent_duplicates
);
async fn concurrent_duplicates(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let node = server.node().await;
    let calls = (0..100).map(|_| {
        let node = node.clone();
        let req = enroll_request("dup", &csr_pem);
        tokio::spawn(async move { node.enroll(req).await })
    });
    let mut chains = HashSet::new();
    for call in calls {
        chains.insert(call.await.unwrap().unwrap().certificate_chain_pem);
    }
    assert_eq!(chains.len(), 1, "every duplicate got the same certificate");
    for chain in &chains {
        check_issued(
            chain,
            &server.pki.ca.cert_pem,
            WORKLOAD,
            server.clock.now_odt().unix_timestamp(),
        );
    }
    let issued = server
        .store()
        .audit_chain()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.action == "certificate.issued")
        .count();
    assert_eq!(issued, 1, "exactly one certificate was signed");
    server.shutdown().await;
}

both_backends!(request_ids_are_scoped_to_the_caller, scoped_ids);
async fn scoped_ids(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let (csr_pem, key) = csr(WORKLOAD, &[]);
    let issued = server
        .node()
        .await
        .enroll(enroll_request("shared-id", &csr_pem))
        .await
        .unwrap();
    check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        server.clock.now_odt().unix_timestamp(),
    );
    // The workload's own "shared-id" is a different request.
    let workload = server
        .client_with(&issued.certificate_chain_pem, &key.serialize_pem())
        .await
        .unwrap();
    assert_eq!(
        workload.get_request("shared-id").await.unwrap_err().code,
        Code::NotFound
    );
    server.shutdown().await;
}
