//! Bad input over the wire: every malformed, disallowed or out-of-range request is refused by a
//! real server over mTLS with its code and stable reason. What is stored is the REJECTED or
//! DENIED request with its reason and audit event: no serial, no certificate.

mod rows;

use mintgate_domain::audit::verify_chain;
use mintgate_domain::store::CertificateStore;
use mintgate_sdk::{Client, v1};
use mintgate_tests::bad_csr::fixture;
use mintgate_tests::csr::{Expected, check_issued, check_issued_as, csr};
use mintgate_tests::{Backend, NODE_ID, TestServer, both_backends};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::issuance::{WORKLOAD, enroll_request};
use rows::{CONTROL_ID, Row};

type Provisioning = v1::provisioning_client::ProvisioningClient<Channel>;

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

both_backends!(
    every_bad_input_is_refused_with_its_reason_and_nothing_is_stored,
    bad_input_table
);
async fn bad_input_table(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let node = server.node().await;
    let mut raw = server.node_provisioning().await;

    // Controls: good requests made like the rows (rcgen, and openssl like the fixtures) are
    // issued, so each row is refused for its one property; the reuse rows use the first id.
    let asked_dns = ["web.svc.cluster.local"];
    let (control_csr, _) = csr(WORKLOAD, &asked_dns);
    let controls = [
        (CONTROL_ID, control_csr.into_bytes(), &asked_dns[..]),
        ("control-openssl-p256", fixture("p256-sha256").to_vec(), &[]),
        (
            "control-openssl-rsa2048",
            fixture("rsa2048-sha256").to_vec(),
            &[],
        ),
    ];
    let mut serials = Vec::new();
    for (id, csr, dns) in &controls {
        let now = server.clock.now_odt().unix_timestamp();
        let request = v1::EnrollRequest {
            csr: csr.clone(),
            ..enroll_request(id, "")
        };
        let issued = node.enroll(request).await.unwrap();
        let checked = check_issued_as(
            &issued.certificate_chain_pem,
            &server.pki.ca.cert_pem,
            &Expected::with_dns(WORKLOAD, dns),
            now,
        );
        assert_eq!(checked.serial_hex, issued.serial);
        serials.push((id, issued.serial));
    }

    let rows = rows::all(&controls[0].1);
    let mut names: Vec<&str> = rows.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), rows.len(), "row names are unique");
    let mut failures = Vec::new();
    for row in &rows {
        if let Err(why) = refused_as_expected(&mut raw, &node, row, &serials[0].1).await {
            failures.push(format!("  {}: {why}", row.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows were not refused as expected:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );

    // Looking up a request id never sent is NOT_FOUND, a user fault.
    let status = raw
        .get_request(v1::GetRequestRequest {
            request_id: "never-sent".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(error_info(&status), Ok(("NOT_FOUND".to_owned(), true)));

    // The controls are ISSUED; every row with a readable, fresh request id is REJECTED; nothing
    // else reached the database.
    let rejected: Vec<&str> = rows
        .iter()
        .map(|r| r.request_id.as_str())
        .filter(|id| *id != CONTROL_ID && mintgate_domain::RequestId::parse(id).is_ok())
        .collect();
    let stored = server.stored_rows().await;
    let mut want_requests: Vec<_> = controls
        .iter()
        .map(|(id, ..)| (NODE_ID.to_owned(), (*id).to_owned(), "ISSUED".to_owned()))
        .chain(
            rejected
                .iter()
                .map(|id| (NODE_ID.to_owned(), (*id).to_owned(), "REJECTED".to_owned())),
        )
        .collect();
    want_requests.sort();
    let mut requests = stored.requests;
    requests.sort();
    assert_eq!(requests, want_requests);
    let mut want_certificates: Vec<_> = serials
        .iter()
        .map(|(_, serial)| (serial.clone(), "ACTIVE".to_owned()))
        .collect();
    want_certificates.sort();
    assert_eq!(stored.certificates, want_certificates);

    // The audit chain verifies: the controls' issuance, and one rejection per rejected row.
    let chain = server.store().audit_chain().await.unwrap();
    assert_eq!(verify_chain(chain.clone()), Ok(chain.len() as u64));
    for e in chain.iter().filter(|e| e.event.actor != "bootstrap") {
        let rid = e.event.request_id.as_deref().unwrap_or_default();
        let control = controls.iter().any(|(id, ..)| *id == rid);
        assert!(
            control || (e.event.action == "request.rejected" && rejected.contains(&rid)),
            "unexpected audit event: {:?}",
            e.event
        );
    }
    let rejections = chain
        .iter()
        .filter(|e| e.event.action == "request.rejected")
        .count();
    assert_eq!(rejections, rejected.len());
    let issued = chain
        .iter()
        .filter(|e| e.event.action == "certificate.issued")
        .count();
    assert_eq!(issued, controls.len());
    server.shutdown().await;
}

/// Sends `row` and checks the answer: INVALID_ARGUMENT with the row's reason, ErrorInfo domain
/// `mintgate` and `fault=user`; and afterwards its request REJECTED with that reason and no
/// serial (or, for a reused id, the control request unchanged).
async fn refused_as_expected(
    raw: &mut Provisioning,
    node: &Client,
    row: &Row,
    control_serial: &str,
) -> Result<(), String> {
    let request = v1::EnrollRequest {
        request_id: row.request_id.clone(),
        csr: row.csr.clone(),
        ttl: row.ttl,
        join_token: String::new(),
        service_account_token: String::new(),
    };
    let status = match raw.enroll(request).await {
        Ok(issued) => return Err(format!("issued {}", issued.into_inner().serial)),
        Err(status) => status,
    };
    let (reason, user_fault) = error_info(&status)?;
    if (status.code(), reason.as_str(), user_fault) != (Code::InvalidArgument, row.reason, true) {
        return Err(format!(
            "got {:?} {reason} (fault=user: {user_fault}), want InvalidArgument {}: {}",
            status.code(),
            row.reason,
            status.message()
        ));
    }
    if mintgate_domain::RequestId::parse(&row.request_id).is_err() {
        return Ok(());
    }
    match node.get_request(&row.request_id).await {
        Ok(found) if row.request_id == CONTROL_ID => {
            if found.state() == v1::RequestState::Issued && found.serial == control_serial {
                Ok(())
            } else {
                Err(format!("the control request changed: {found:?}"))
            }
        }
        Ok(found)
            if found.state() == v1::RequestState::Rejected
                && found.reason == row.reason
                && found.serial.is_empty() =>
        {
            Ok(())
        }
        other => Err(format!(
            "not recorded as REJECTED {}: {other:?}",
            row.reason
        )),
    }
}

/// The ErrorInfo reason and whether its metadata says `fault=user`; an error if the status has
/// no ErrorInfo from the `mintgate` domain.
fn error_info(status: &tonic::Status) -> Result<(String, bool), String> {
    let info = status
        .get_details_error_info()
        .ok_or_else(|| format!("no ErrorInfo in {status:?}"))?;
    if info.domain != "mintgate" {
        return Err(format!("ErrorInfo domain {:?}", info.domain));
    }
    let user = info.metadata.get("fault").map(String::as_str) == Some("user");
    Ok((info.reason, user))
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
        "POLICY_DENIED",
    )
    .await;
    let (dns, _) = csr(WORKLOAD, &["evil.example.com"]);
    refused(
        &node,
        enroll_request("dns", &dns),
        Code::PermissionDenied,
        "POLICY_DENIED",
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
        (Code::PermissionDenied, "POLICY_DENIED")
    );

    let (csr_pem, key) = csr(WORKLOAD, &[]);
    let now = server.clock.now_odt().unix_timestamp();
    let issued = node.enroll(enroll_request("ok", &csr_pem)).await.unwrap();
    check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        now,
    );
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
