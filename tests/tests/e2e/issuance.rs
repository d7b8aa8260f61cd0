//! The happy paths: enroll with a node certificate, with a join token, renew, look up.

use mintgate_sdk::v1;
use mintgate_tests::csr::{Expected, check_issued, check_issued_as, csr};
use mintgate_tests::{Backend, TestServer, both_backends};

pub const WORKLOAD: &str = "spiffe://dev.mintgate.local/workload/web";

pub fn enroll_request(request_id: &str, csr_pem: &str) -> v1::EnrollRequest {
    v1::EnrollRequest {
        request_id: request_id.to_owned(),
        csr: csr_pem.as_bytes().to_vec(),
        ttl: None,
        join_token: String::new(),
        service_account_token: String::new(),
    }
}

both_backends!(
    node_enrolls_then_renews_and_the_old_certificate_is_superseded,
    enroll_and_renew
);
async fn enroll_and_renew(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let now = server.clock.now_odt().unix_timestamp();
    let (csr_pem, key) = csr(WORKLOAD, &["web.svc.cluster.local"]);
    let issued = server
        .node()
        .await
        .enroll(enroll_request("e-1", &csr_pem))
        .await
        .unwrap();
    let checked = check_issued_as(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        &Expected::with_dns(WORKLOAD, &["web.svc.cluster.local"]),
        now,
    );
    assert_eq!(checked.serial_hex, issued.serial);
    assert_eq!(issued.spiffe_id, WORKLOAD);
    // Default lifetime is the policy maximum (1 h), backdated a little.
    assert!(checked.not_after - now <= 3600 && checked.not_after - now > 3500);
    assert!(now - checked.not_before <= 60);

    // The workload renews with its new certificate and a new key.
    let workload = server
        .client_with(&issued.certificate_chain_pem, &key.serialize_pem())
        .await
        .unwrap();
    let (csr2, _key2) = csr(WORKLOAD, &[]);
    let renewed = workload
        .renew(v1::RenewRequest {
            request_id: "r-1".into(),
            csr: csr2.into_bytes(),
            ttl: Some(mintgate_sdk::seconds(600)),
        })
        .await
        .unwrap();
    let checked2 = check_issued(
        &renewed.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        now,
    );
    assert_ne!(checked2.serial_hex, checked.serial_hex);
    assert!(checked2.not_after - now <= 600);

    let old = mintgate_domain::Serial::parse_hex(&issued.serial).unwrap();
    let record = mintgate_domain::store::CertificateStore::certificate(server.store(), &old)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.state.as_str(), "SUPERSEDED");

    // Renewing again with the superseded certificate is refused.
    let (csr3, _) = csr(WORKLOAD, &[]);
    let err = workload
        .renew(v1::RenewRequest {
            request_id: "r-2".into(),
            csr: csr3.into_bytes(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (tonic::Code::FailedPrecondition, "CERTIFICATE_SUPERSEDED")
    );

    // CheckStatus tells the superseded certificate from the current one.
    let report = server
        .admin()
        .await
        .check_status(vec![issued.serial.clone(), renewed.serial.clone()])
        .await
        .unwrap();
    let statuses: Vec<_> = report.statuses.iter().map(|s| s.status()).collect();
    assert_eq!(
        statuses,
        [
            v1::CertificateStatus::Superseded,
            v1::CertificateStatus::Good
        ]
    );

    // The request is visible to its caller.
    let status = server.node().await.get_request("e-1").await.unwrap();
    assert_eq!(status.state(), v1::RequestState::Issued);
    assert_eq!(status.serial, issued.serial);
    server.shutdown().await;
}

both_backends!(
    a_ttl_above_the_policy_maximum_is_cut_to_it_and_the_answer_says_so,
    ttl_cut
);
async fn ttl_cut(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let now = server.clock.now_odt().unix_timestamp();
    let mut node = server.node_provisioning().await;
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let asked = v1::EnrollRequest {
        ttl: Some(mintgate_sdk::seconds(7200)),
        ..enroll_request("long", &csr_pem)
    };
    let issued = node.enroll(asked.clone()).await.unwrap().into_inner();
    // The dev policy grants at most an hour.
    let checked = check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        now,
    );
    assert_eq!(checked.not_after - now, 3600);
    assert_eq!(issued.granted_ttl, Some(mintgate_sdk::seconds(3600)));
    assert_eq!(issued.clamp_reason(), v1::ClampReason::PolicyMaxTtl);
    // A retry gets the same answer, cut and all.
    let again = node.enroll(asked).await.unwrap().into_inner();
    assert_eq!(again, issued);
    // What fits is not cut.
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let fits = v1::EnrollRequest {
        ttl: Some(mintgate_sdk::seconds(3600)),
        ..enroll_request("fits", &csr_pem)
    };
    let fits = node.enroll(fits).await.unwrap().into_inner();
    assert_eq!(fits.clamp_reason(), v1::ClampReason::None);
    server.shutdown().await;
}

both_backends!(
    join_tokens_are_one_time_and_bound_to_one_identity,
    join_tokens
);
async fn join_tokens(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let joined = "spiffe://dev.mintgate.local/joined/batch-1";
    let admin = server.admin().await;
    let token = admin
        .create_join_token(v1::CreateJoinTokenRequest {
            request_id: "t-1".into(),
            spiffe_id: joined.into(),
            ttl: None,
        })
        .await
        .unwrap();
    assert_eq!(token.spiffe_id, joined);
    let node = server.node().await;

    // The dev policy asks for a token for joined/... (policy "join-token").
    let (csr_pem, _) = csr(joined, &[]);
    let err = node
        .enroll(enroll_request("j-0", &csr_pem))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (tonic::Code::PermissionDenied, "POLICY_DENIED")
    );

    // A token for another identity does not help.
    let (other_csr, _) = csr("spiffe://dev.mintgate.local/joined/other", &[]);
    let mut req = enroll_request("j-1", &other_csr);
    req.join_token = token.token.clone();
    let err = node.enroll(req).await.unwrap_err();
    assert_eq!(err.reason, "JOIN_TOKEN_WRONG_IDENTITY");

    let mut req = enroll_request("j-2", &csr_pem);
    req.join_token = token.token.clone();
    let issued = node.enroll(req).await.unwrap();
    check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        joined,
        server.clock.now_odt().unix_timestamp(),
    );

    // One-time.
    let mut req = enroll_request("j-3", &csr_pem);
    req.join_token = token.token.clone();
    let err = node.enroll(req).await.unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (tonic::Code::PermissionDenied, "JOIN_TOKEN_USED")
    );

    // Expiry follows the injected clock (default lifetime 10 minutes).
    let t2 = admin
        .create_join_token(v1::CreateJoinTokenRequest {
            request_id: "t-2".into(),
            spiffe_id: joined.into(),
            ttl: None,
        })
        .await
        .unwrap();
    server.clock.advance(std::time::Duration::from_secs(601));
    let mut req = enroll_request("j-4", &csr_pem);
    req.join_token = t2.token;
    let err = node.enroll(req).await.unwrap_err();
    assert_eq!(err.reason, "JOIN_TOKEN_EXPIRED");

    // A garbage token.
    let mut req = enroll_request("j-5", &csr_pem);
    req.join_token = "mgjt.nope.nope".into();
    assert_eq!(
        node.enroll(req).await.unwrap_err().reason,
        "JOIN_TOKEN_INVALID"
    );

    // Retrying CreateJoinToken with the same id shows the same token; a new payload is refused.
    let again = admin
        .create_join_token(v1::CreateJoinTokenRequest {
            request_id: "t-1".into(),
            spiffe_id: joined.into(),
            ttl: None,
        })
        .await
        .unwrap();
    assert_eq!(again.token, token.token);
    let err = admin
        .create_join_token(v1::CreateJoinTokenRequest {
            request_id: "t-1".into(),
            spiffe_id: "spiffe://dev.mintgate.local/joined/x".into(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (tonic::Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED")
    );
    server.shutdown().await;
}
