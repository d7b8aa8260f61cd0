//! What the CA lifecycle refuses (DESIGN §14): bad proposals, each with its reason; and a
//! server that cannot open the ACTIVE CA's key says it is not ready.

use mintgate_sdk::v1;
use mintgate_tests::{Backend, TestServer, both_backends};
use tonic::Code;

use crate::governance::{approve, reason};
use crate::rotation::{custodians, key_id_of, prepare, states, step, successor};

both_backends!(a_bad_ca_proposal_is_refused_with_its_reason, bad_proposals);
async fn bad_proposals(backend: Backend) {
    let server = TestServer::spawn_with(custodians(backend)).await;
    let dir = tempfile::tempdir().unwrap();
    let (next, key) = successor(&server, dir.path());
    let old_id = key_id_of(&server.pki.ca.cert_pem);
    let mut alice = server.admin_as("alice").await;
    let prepare = |chain: &str, key: &str| v1::ProposeCaRequest {
        request_id: "bad".into(),
        action: v1::CaAction::Prepare.into(),
        chain_pem: chain.into(),
        key: key.into(),
        key_id: String::new(),
    };
    let loose = dir.path().join("loose.key");
    std::fs::write(&loose, &next.key_pem).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let old_key = dir.path().join("old.key");
    std::fs::write(&old_key, &server.pki.ca.key_pem).unwrap();
    std::fs::set_permissions(
        &old_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let unspecified = v1::ProposeCaRequest {
        request_id: "bad".into(),
        ..Default::default()
    };
    let cases = [
        (unspecified, Code::InvalidArgument, "CA_ACTION_INVALID"),
        (prepare("", &key), Code::InvalidArgument, "FIELD_MISSING"),
        (
            prepare(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                &key,
            ),
            Code::InvalidArgument,
            "CA_INVALID",
        ),
        // The chain of one CA with the key of another.
        (
            prepare(&server.pki.ca.cert_pem, &key),
            Code::InvalidArgument,
            "CA_INVALID",
        ),
        // A key file others may read.
        (
            prepare(&next.cert_pem, &loose.display().to_string()),
            Code::InvalidArgument,
            "CA_INVALID",
        ),
        (
            prepare(&server.pki.ca.cert_pem, &old_key.display().to_string()),
            Code::FailedPrecondition,
            "CA_EXISTS",
        ),
        (
            step("bad", v1::CaAction::Activate, "00ff"),
            Code::NotFound,
            "CA_NOT_FOUND",
        ),
        (
            step("bad", v1::CaAction::Retire, &old_id),
            Code::FailedPrecondition,
            "CA_STATE",
        ),
        (
            step("bad", v1::CaAction::Activate, ""),
            Code::InvalidArgument,
            "FIELD_MISSING",
        ),
    ];
    for (request, code, why) in cases {
        let refused = alice.propose_ca(request.clone()).await.unwrap_err();
        assert_eq!(
            (refused.code(), reason(&refused).as_str()),
            (code, why),
            "{request:?}: {refused:?}"
        );
    }
    // Not an operator: refused before anything is looked at.
    let mut node = v1::admin_client::AdminClient::new(
        server
            .channel(&server.pki.node.cert_pem, &server.pki.node.key_pem)
            .await
            .unwrap(),
    );
    let refused = node
        .propose_ca(prepare(&next.cert_pem, &key))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Nothing was recorded.
    let listed = alice
        .list_authorities(v1::ListAuthoritiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(states(&listed), [(old_id, v1::CaState::Active)]);
}

both_backends!(
    a_server_that_cannot_open_the_active_ca_key_is_not_ready,
    key_out_of_reach
);
async fn key_out_of_reach(backend: Backend) {
    let server = TestServer::spawn_with(custodians(backend)).await;
    let dir = tempfile::tempdir().unwrap();
    let (next, key) = successor(&server, dir.path());
    prepare(&server, &next, &key).await;
    // The key is gone from this machine; a restarted server cannot open it.
    std::fs::remove_file(&key).unwrap();
    let server = server.restart().await;
    server
        .clock
        .advance(mintgate_domain::authority::DEFAULT_PUBLISH);
    let (code, _) = server.http_get("/readyz").await;
    assert_eq!(
        code, 200,
        "a prepared CA it cannot open does not stop it serving"
    );
    let activate = server
        .admin_as("alice")
        .await
        .propose_ca(step(
            "activate",
            v1::CaAction::Activate,
            &key_id_of(&next.cert_pem),
        ))
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap();
    approve(&mut server.admin_as("bob").await, &activate.id)
        .await
        .unwrap();
    let (code, body) = server.http_get("/readyz").await;
    assert_eq!(code, 503);
    assert!(String::from_utf8_lossy(&body).starts_with("CA_NOT_LOADED"));
    server.shutdown().await;
}
