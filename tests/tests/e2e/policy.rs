//! Policy as code: every decision names the Cedar policy version and the policies that
//! determined it, in the request record, the audit trail and, for a refusal, the `ErrorInfo`;
//! a permit's annotations shape the certificate.

use mintgate_domain::TrustDomain;
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::policy::{Policy, PolicyFile, PolicySource};
use mintgate_domain::store::CertificateStore;
use mintgate_sdk::v1;
use mintgate_tests::csr::{Expected, check_issued, check_issued_as, csr};
use mintgate_tests::{Backend, NODE_ID, Options, TRUST_DOMAIN, TestServer, both_backends};
use tonic::Code;
use tonic_types::StatusExt;

use crate::issuance::{WORKLOAD, enroll_request};

/// The dev policy plus a permit with limits of its own and a forbid that wins over `dev-nodes`.
const EXTRA: &str = r#"
@id("api-server")
@max_ttl_seconds("600")
@server_auth("true")
permit (principal, action == Action::"Issue", resource)
when {
  principal.path like "/node/*" && resource.path == "/api/server" &&
  ["api.example.com"].containsAll(context.dns_names)
};

@id("no-db-workloads")
forbid (principal, action, resource is SpiffeId)
when { resource.path like "/workload/db/*" };
"#;

pub(crate) fn extended_policy() -> PolicySource {
    let mut source = PolicySource::dev();
    source.files.push(PolicyFile {
        name: "extra.cedar".to_owned(),
        text: EXTRA.to_owned(),
    });
    source
}

pub(crate) fn version_of(source: &PolicySource) -> String {
    let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
    Policy::load(source, Some(&td))
        .unwrap()
        .version()
        .to_owned()
}

both_backends!(
    an_allowed_enroll_records_the_policy_version_and_determining_policy,
    allowed_is_recorded
);
async fn allowed_is_recorded(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let version = version_of(&PolicySource::dev());
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let issued = server
        .node()
        .await
        .enroll(enroll_request("p-1", &csr_pem))
        .await
        .unwrap();

    let record = server
        .store()
        .find_request(NODE_ID, "p-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.state, RequestState::Issued);
    let decision = record.decision.unwrap();
    assert_eq!(decision.policy_version, version);
    assert_eq!(decision.policies, ["dev-nodes"]);

    let chain = server.store().audit_chain().await.unwrap();
    for action in ["request.approved", "certificate.issued"] {
        let event = &chain
            .iter()
            .find(|e| e.event.action == action)
            .unwrap()
            .event;
        assert_eq!(event.request_id.as_deref(), Some("p-1"), "{action}");
        assert_eq!(
            event.policy_version.as_deref(),
            Some(version.as_str()),
            "{action}"
        );
        assert_eq!(event.policy_rule.as_deref(), Some("dev-nodes"), "{action}");
    }
    assert!(
        chain
            .iter()
            .any(|e| e.event.subject == format!("serial:{}", issued.serial))
    );
    server.shutdown().await;
}

both_backends!(
    a_denied_enroll_is_policy_denied_with_the_version_and_determining_policies,
    denied_is_explained
);
async fn denied_is_explained(backend: Backend) {
    let policy = extended_policy();
    let version = version_of(&policy);
    let server = TestServer::spawn_with(Options {
        policy: Some(policy),
        ..Options::new(backend)
    })
    .await;
    let mut raw = server.node_provisioning().await;

    // A forbid wins over the permit that would grant it, and is named.
    let db = "spiffe://dev.mintgate.local/workload/db/main";
    let (csr_pem, _) = csr(db, &[]);
    let status = raw
        .enroll(enroll_request("p-forbid", &csr_pem))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "POLICY_DENIED");
    assert_eq!(info.domain, "mintgate");
    assert_eq!(info.metadata["fault"], "user");
    assert_eq!(info.metadata["policy_version"], version);
    assert_eq!(info.metadata["determining_policies"], "no-db-workloads");
    assert!(
        status
            .message()
            .contains("the policy forbids this request (no-db-workloads)"),
        "{status:?}"
    );

    // Nothing permits it: no determining policy, the version still named.
    let (csr_pem, _) = csr("spiffe://dev.mintgate.local/payments/api", &[]);
    let status = raw
        .enroll(enroll_request("p-none", &csr_pem))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "POLICY_DENIED");
    assert_eq!(info.metadata["policy_version"], version);
    assert_eq!(info.metadata["determining_policies"], "");

    // Both refusals are recorded with their decision.
    for (request_id, policies) in [("p-forbid", &["no-db-workloads"][..]), ("p-none", &[])] {
        let record = server
            .store()
            .find_request(NODE_ID, request_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.state, RequestState::Denied, "{request_id}");
        assert_eq!(record.reason.as_deref(), Some("POLICY_DENIED"));
        let decision = record.decision.unwrap();
        assert_eq!(decision.policy_version, version, "{request_id}");
        assert_eq!(decision.policies, policies, "{request_id}");
    }
    let chain = server.store().audit_chain().await.unwrap();
    let denied = |request_id: &str| {
        chain
            .iter()
            .find(|e| {
                e.event.action == "request.denied"
                    && e.event.request_id.as_deref() == Some(request_id)
            })
            .unwrap()
            .event
            .clone()
    };
    let forbidden = denied("p-forbid");
    assert_eq!(forbidden.policy_version.as_deref(), Some(version.as_str()));
    assert_eq!(forbidden.policy_rule.as_deref(), Some("no-db-workloads"));
    let detail = forbidden.detail.unwrap();
    assert!(
        detail.contains("RECEIVED->DENIED POLICY_DENIED, risk "),
        "{detail}"
    );
    assert_eq!(denied("p-none").policy_rule, None);

    // The permit's annotations shape the certificate: serverAuth, and at most 10 minutes.
    let now = server.clock.now_odt().unix_timestamp();
    let api = "spiffe://dev.mintgate.local/api/server";
    let (csr_pem, _) = csr(api, &["api.example.com"]);
    let asked = v1::EnrollRequest {
        ttl: Some(mintgate_sdk::seconds(3600)),
        ..enroll_request("p-api", &csr_pem)
    };
    let issued = raw.enroll(asked).await.unwrap().into_inner();
    let checked = check_issued_as(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        &Expected {
            spiffe_id: api,
            dns_names: &["api.example.com"],
            server_auth: true,
        },
        now,
    );
    assert_eq!(checked.not_after - now, 600);
    assert_eq!(issued.clamp_reason(), v1::ClampReason::PolicyMaxTtl);
    // The dev permits still grant what they did, without serverAuth.
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let web = raw
        .enroll(enroll_request("p-web", &csr_pem))
        .await
        .unwrap()
        .into_inner();
    check_issued(
        &web.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        now,
    );
    server.shutdown().await;
}
