//! Bad input over the wire: each refused with its code and stable reason, nothing stored.

use mintgate_sdk::{Client, seconds, v1};
use mintgate_tests::csr::csr;
use mintgate_tests::{Backend, TestServer, both_backends};
use tonic::Code;

use crate::issuance::{WORKLOAD, enroll_request};

/// The request is refused with `code` and `reason`; it is recorded as REJECTED (bad input) or
/// DENIED (not allowed) with that reason and no serial, and retrying it answers REQUEST_CLOSED.
async fn refused(client: &Client, request: v1::EnrollRequest, code: Code, reason: &str) {
    let rid = request.request_id.clone();
    let err = client.enroll(request.clone()).await.expect_err(reason);
    assert_eq!(
        (err.code, err.reason.as_str()),
        (code, reason),
        "{rid}: {}",
        err.message
    );
    assert_eq!(err.fault.as_deref(), Some("user"), "{rid}");
    let status = client.get_request(&rid).await.unwrap();
    let want = match code {
        Code::InvalidArgument => v1::RequestState::Rejected,
        _ => v1::RequestState::Denied,
    };
    assert_eq!(status.state(), want, "{rid}");
    assert_eq!(status.reason, reason, "{rid}");
    assert_eq!(
        status.serial, "",
        "{rid}: a refused request reserved a serial"
    );
    let again = client.enroll(request).await.expect_err(reason);
    assert_eq!(
        (again.code, again.reason.as_str()),
        (Code::FailedPrecondition, "REQUEST_CLOSED"),
        "{rid}"
    );
    assert!(again.message.contains(reason), "{rid}: {}", again.message);
}

both_backends!(malformed_csrs_are_invalid_arguments, malformed_csrs);
async fn malformed_csrs(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let node = server.node().await;
    let (good, _) = csr(WORKLOAD, &[]);
    let with_csr = |id: &str, bytes: Vec<u8>| v1::EnrollRequest {
        csr: bytes,
        ..enroll_request(id, "")
    };

    refused(
        &node,
        with_csr("garbage", b"hello".to_vec()),
        Code::InvalidArgument,
        "CSR_MALFORMED",
    )
    .await;
    let truncated = good.as_bytes()[..good.len() / 2].to_vec();
    refused(
        &node,
        with_csr("truncated", truncated),
        Code::InvalidArgument,
        "CSR_MALFORMED",
    )
    .await;
    let two = format!("{good}{good}");
    let err = node
        .enroll(with_csr("two", two.into_bytes()))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.reason.starts_with("CSR_"), "{}", err.reason);

    // A flipped byte near the end of the DER lands in the signature.
    let der = pem_to_der(&good);
    let mut flipped = der.clone();
    let n = flipped.len();
    flipped[n - 3] ^= 0x01;
    refused(
        &node,
        with_csr("flipped", flipped),
        Code::InvalidArgument,
        "CSR_SIGNATURE_INVALID",
    )
    .await;
    // Trailing bytes after the DER.
    let mut trailing = der.clone();
    trailing.extend_from_slice(b"\x00\x01");
    let err = node
        .enroll(with_csr("trailing", trailing))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);

    // Oversized.
    let big = vec![b'A'; 17 * 1024];
    refused(
        &node,
        with_csr("big", big),
        Code::InvalidArgument,
        "CSR_TOO_LARGE",
    )
    .await;

    // SPIFFE ID rules reach the wire with their own reasons.
    let (foreign, _) = csr("spiffe://other.example/workload/web", &[]);
    refused(
        &node,
        enroll_request("foreign", &foreign),
        Code::InvalidArgument,
        "TRUST_DOMAIN_MISMATCH",
    )
    .await;
    let (dots, _) = csr("spiffe://dev.mintgate.local/workload/../admin", &[]);
    refused(
        &node,
        enroll_request("dots", &dots),
        Code::InvalidArgument,
        "SPIFFE_PATH_INVALID",
    )
    .await;
    server.shutdown().await;
}

both_backends!(bad_ttls_and_request_ids_are_invalid_arguments, ttls_and_ids);
async fn ttls_and_ids(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let node = server.node().await;
    let (good, _) = csr(WORKLOAD, &[]);
    for (id, ttl) in [
        ("ttl-zero", seconds(0)),
        ("ttl-negative", seconds(-60)),
        ("ttl-over-max", seconds(3601)),
        (
            "ttl-overflow",
            prost_types::Duration {
                seconds: i64::MAX,
                nanos: 999_999_999,
            },
        ),
    ] {
        let req = v1::EnrollRequest {
            ttl: Some(ttl),
            ..enroll_request(id, &good)
        };
        refused(&node, req, Code::InvalidArgument, "TTL_INVALID").await;
    }
    let err = node
        .enroll(enroll_request(&"x".repeat(129), &good))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (Code::InvalidArgument, "REQUEST_ID_INVALID")
    );
    let err = node.enroll(enroll_request("", &good)).await.unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (Code::InvalidArgument, "REQUEST_ID_INVALID")
    );
    server.shutdown().await;
}

both_backends!(what_policy_does_not_grant_is_permission_denied, not_granted);
async fn not_granted(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let node = server.node().await;
    let (other, _) = csr("spiffe://dev.mintgate.local/payments/api", &[]);
    refused(
        &node,
        enroll_request("not-granted", &other),
        Code::PermissionDenied,
        "SPIFFE_ID_NOT_GRANTED",
    )
    .await;
    let (dns, _) = csr(WORKLOAD, &["evil.example.com"]);
    refused(
        &node,
        enroll_request("dns", &dns),
        Code::PermissionDenied,
        "DNS_NAME_NOT_GRANTED",
    )
    .await;

    // Nodes and workloads may not call Admin.
    let token_req = || v1::CreateJoinTokenRequest {
        request_id: "t".into(),
        spiffe_id: "spiffe://dev.mintgate.local/joined/x".into(),
        ttl: None,
    };
    let err = node.create_join_token(token_req()).await.unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (Code::PermissionDenied, "OPERATOR_ROLE_MISSING")
    );

    let (csr_pem, key) = csr(WORKLOAD, &[]);
    let issued = node.enroll(enroll_request("ok", &csr_pem)).await.unwrap();
    let workload = server
        .client_with(&issued.certificate_chain_pem, &key.serialize_pem())
        .await
        .unwrap();
    let err = workload.create_join_token(token_req()).await.unwrap_err();
    assert_eq!(err.code, Code::PermissionDenied);

    // A workload may not obtain another identity, by Enroll or by Renew.
    let (theirs, _) = csr("spiffe://dev.mintgate.local/workload/db", &[]);
    refused(
        &workload,
        enroll_request("steal", &theirs),
        Code::PermissionDenied,
        "IDENTITY_MISMATCH",
    )
    .await;
    let err = workload
        .renew(v1::RenewRequest {
            request_id: "steal-2".into(),
            csr: theirs.into_bytes(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (Code::PermissionDenied, "IDENTITY_MISMATCH")
    );

    // An operator cannot enroll workloads, and a node cannot renew.
    let err = server
        .admin()
        .await
        .enroll(enroll_request("op", &csr_pem))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (Code::PermissionDenied, "CALLER_KIND_NOT_ALLOWED")
    );
    let err = node
        .renew(v1::RenewRequest {
            request_id: "node-renew".into(),
            csr: csr_pem.into_bytes(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::PermissionDenied);
    server.shutdown().await;
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}
