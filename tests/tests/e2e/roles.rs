//! Operators' roles (DESIGN §13): bindings in the store, changed by two people, optionally
//! time-bound (an expired one is refused with its own reason); `admin` is break-glass, its every
//! use audited and counted; callers that are not operators get no operator RPC.

use std::time::Duration;

use mintgate_domain::governance::GovernanceStore;
use mintgate_domain::store::CertificateStore;
use mintgate_sdk::v1;
use mintgate_tests::{ALICE_ID, BOB_ID, Backend, TestServer, both_backends};
use tonic::Code;

use crate::governance::{approve, reason};
use crate::metrics::Scrape;

both_backends!(
    roles_come_from_two_person_bindings_and_expire,
    role_bindings
);
async fn role_bindings(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let (mut alice, mut bob) = (server.admin_as("alice").await, server.admin_as("bob").await);
    const WEB_ID: &str = "spiffe://dev.mintgate.local/workload/web";

    // alice may not approve an unblock: she is no approver.
    let block = |id: &str| v1::RevokeIdentityRequest {
        request_id: id.into(),
        spiffe_id: WEB_ID.into(),
        reason: 0,
        block: true,
    };
    let mut bob_revocation =
        v1::revocation_client::RevocationClient::new(server.operator_channel("bob").await);
    bob_revocation
        .revoke_identity(block("block-1"))
        .await
        .unwrap();
    let unblock = |id: &str| v1::UnblockIdentityRequest {
        request_id: id.into(),
        spiffe_id: WEB_ID.into(),
    };
    let proposal = bob_revocation
        .unblock_identity(unblock("unblock-1"))
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap();
    let err = approve(&mut alice, &proposal.id).await.unwrap_err();
    assert_eq!(reason(&err), "POLICY_DENIED");

    // Granting alice the approver role for an hour takes alice and bob.
    let until = server.clock.now_odt() + Duration::from_secs(3600);
    let grant = alice
        .propose_role_binding(v1::ProposeRoleBindingRequest {
            request_id: "grant-1".into(),
            operator: ALICE_ID.into(),
            role: "approver".into(),
            valid_until: Some(prost_types::Timestamp {
                seconds: until.unix_timestamp(),
                nanos: 0,
            }),
            remove: false,
        })
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap();
    assert_eq!(grant.kind(), v1::ProposalKind::RoleBinding);
    approve(&mut bob, &grant.id).await.unwrap();
    let bindings = bob
        .get_governance(v1::GetGovernanceRequest {})
        .await
        .unwrap()
        .into_inner()
        .role_bindings;
    assert!(
        bindings
            .iter()
            .any(|b| b.operator == ALICE_ID && b.role == "approver" && b.valid_until.is_some()),
        "{bindings:?}"
    );
    approve(&mut alice, &proposal.id).await.unwrap();

    // Once the binding has expired, its own reason says so.
    bob_revocation
        .revoke_identity(block("block-2"))
        .await
        .unwrap();
    let proposal = bob_revocation
        .unblock_identity(unblock("unblock-2"))
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap();
    server.clock.advance(Duration::from_secs(2 * 3600));
    let err = approve(&mut alice, &proposal.id).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "ROLE_EXPIRED")
    );
    assert!(err.message().contains("approver"), "{}", err.message());

    // Taking a role away is a proposal too.
    let removal = alice
        .propose_role_binding(v1::ProposeRoleBindingRequest {
            request_id: "remove-1".into(),
            operator: BOB_ID.into(),
            role: "auditor".into(),
            valid_until: None,
            remove: true,
        })
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap();
    let mut admin = server.admin_as("admin").await;
    approve(&mut admin, &removal.id).await.unwrap();
    let bob_roles: Vec<_> = server
        .store()
        .role_bindings_of(BOB_ID)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.role)
        .collect();
    assert!(!bob_roles.contains(&"auditor".to_owned()), "{bob_roles:?}");
    let chain = server.store().audit_chain().await.unwrap();
    assert!(
        chain
            .iter()
            .any(|e| e.event.action == "role.granted" && e.event.actor == BOB_ID)
    );
    assert!(chain.iter().any(|e| e.event.action == "role.removed"));
    server.shutdown().await;
}

both_backends!(admin_is_break_glass_counted_and_audited, break_glass);
async fn break_glass(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let request = |id: &str| v1::CreateJoinTokenRequest {
        request_id: id.into(),
        spiffe_id: "spiffe://dev.mintgate.local/joined/demo".into(),
        ttl: None,
    };
    // alice is an issuer: no break-glass.
    server
        .admin_as("alice")
        .await
        .create_join_token(request("t-alice"))
        .await
        .unwrap();
    server
        .admin_as("admin")
        .await
        .create_join_token(request("t-admin"))
        .await
        .unwrap();
    let scrape = Scrape::take(&server).await;
    assert_eq!(
        scrape.value(
            "mintgate_break_glass_total",
            &[("operation", "CreateJoinToken")]
        ),
        1.0
    );
    let chain = server.store().audit_chain().await.unwrap();
    let uses: Vec<_> = chain
        .iter()
        .filter(|e| e.event.action == "operator.break_glass")
        .collect();
    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0].event.actor, mintgate_tests::ADMIN_ID);
    assert_eq!(uses[0].event.subject, "operation:CreateJoinToken");

    // Workloads and nodes are refused every operator RPC by the policy.
    let mut node = v1::admin_client::AdminClient::new(
        server
            .channel(&server.pki.node.cert_pem, &server.pki.node.key_pem)
            .await
            .unwrap(),
    );
    let err = node.create_join_token(request("t-node")).await.unwrap_err();
    assert_eq!(reason(&err), "POLICY_DENIED");

    // The access review lists every binding with its holder's last use: admin's is its
    // break-glass use, bob has not acted.
    let out = std::process::Command::new(mintgate_tests::mintgate_bin())
        .args([
            "evidence",
            "access-review",
            "--database-url",
            &server.database_url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = |operator: &str, role: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{operator}\t{role}\t")))
            .unwrap_or_else(|| panic!("no {operator} {role} in {text}"))
            .to_owned()
    };
    assert!(row(mintgate_tests::ADMIN_ID, "admin").contains("operator.break_glass"));
    assert!(row(ALICE_ID, "issuer").contains("join_token.created"));
    assert!(row(BOB_ID, "auditor").ends_with("\tnever"));
    assert!(row(BOB_ID, "auditor").contains("\tno end\t"));
    server.shutdown().await;
}
