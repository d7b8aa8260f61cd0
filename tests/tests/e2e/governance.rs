//! Change control (DESIGN §11, §13): operators act only as the active Cedar policy permits for
//! their role bindings; a policy version, a role binding or an unblock takes two people; a
//! candidate policy can run in shadow; the configured policy directory never replaces the
//! active version by itself.

use mintgate_domain::governance::GovernanceStore;
use mintgate_domain::policy::{PolicyFile, PolicySource};
use mintgate_domain::store::CertificateStore;
use mintgate_sdk::v1;
use mintgate_tests::csr::csr;
use mintgate_tests::{ALICE_ID, BOB_ID, Backend, Options, TestServer, both_backends};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::issuance::{WORKLOAD, enroll_request};
use crate::metrics::Scrape;
use crate::policy::{extended_policy, version_of};

pub(crate) type Admin = v1::admin_client::AdminClient<Channel>;

pub(crate) fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

fn propose_request(
    request_id: &str,
    source: &PolicySource,
    label: &str,
) -> v1::ProposePolicyRequest {
    v1::ProposePolicyRequest {
        request_id: request_id.to_owned(),
        schema: source.schema.clone(),
        files: source
            .files
            .iter()
            .map(|f| v1::PolicyFile {
                name: f.name.clone(),
                text: f.text.clone(),
            })
            .collect(),
        label: label.to_owned(),
    }
}

async fn propose(admin: &mut Admin, request_id: &str, source: &PolicySource) -> v1::Proposal {
    admin
        .propose_policy(propose_request(request_id, source, "CHG-1"))
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap()
}

pub(crate) async fn approve(admin: &mut Admin, id: &str) -> Result<v1::Proposal, tonic::Status> {
    admin
        .approve_proposal(v1::ApproveProposalRequest {
            proposal_id: id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().proposal.unwrap())
}

async fn active_version(admin: &mut Admin) -> String {
    admin
        .get_governance(v1::GetGovernanceRequest {})
        .await
        .unwrap()
        .into_inner()
        .policy_version
}

/// The policy version that decided the enrollment of `request_id` (read from the request row).
async fn decided_by(server: &TestServer, request_id: &str) -> String {
    server
        .store()
        .find_request(mintgate_tests::NODE_ID, request_id)
        .await
        .unwrap()
        .unwrap()
        .decision
        .unwrap()
        .policy_version
}

/// The dev policy with `no-db` forbidding /workload/db/... (a candidate that decides some
/// requests differently).
fn stricter_policy() -> PolicySource {
    let mut source = PolicySource::dev();
    source.files.push(PolicyFile {
        name: "no-db.cedar".to_owned(),
        text: "@id(\"no-db\")\nforbid (principal, action, resource is SpiffeId)\nwhen { resource.path like \"/workload/db/*\" };\n"
            .to_owned(),
    });
    source
}

both_backends!(
    a_policy_change_takes_two_people_and_is_audited,
    two_person_policy_change
);
async fn two_person_policy_change(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let (mut alice, mut bob, mut admin) = (
        server.admin_as("alice").await,
        server.admin_as("bob").await,
        server.admin_as("admin").await,
    );
    let dev = version_of(&PolicySource::dev());
    assert_eq!(
        active_version(&mut bob).await,
        dev,
        "bootstrapped from the directory"
    );

    // Only a policy author proposes.
    let extended = extended_policy();
    let err = bob
        .propose_policy(propose_request("p-bob", &extended, ""))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "POLICY_DENIED")
    );

    let proposal = propose(&mut alice, "p-1", &extended).await;
    assert_eq!(proposal.state(), v1::ProposalState::Open);
    assert_eq!(proposal.kind(), v1::ProposalKind::Policy);
    assert_eq!(proposal.author, ALICE_ID);
    assert_eq!(proposal.policy_version, version_of(&extended));
    assert_eq!(proposal.base_version, dev);
    assert_eq!(proposal.label, "CHG-1");
    let retried = propose(&mut alice, "p-1", &extended).await;
    assert_eq!(retried.id, proposal.id, "a retry answers the same proposal");

    // The diff shows the new file against the active version.
    let shown = bob
        .get_proposal(v1::GetProposalRequest {
            proposal_id: proposal.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(shown.diff.contains("+++ b/extra.cedar"), "{}", shown.diff);
    assert!(
        shown.diff.contains("+@id(\"no-db-workloads\")"),
        "{}",
        shown.diff
    );

    // Nobody approves their own proposal, admin included; alice cannot approve at all.
    let err = approve(&mut alice, &proposal.id).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "SELF_APPROVAL")
    );
    let own = propose(&mut admin, "p-admin", &stricter_policy()).await;
    let err = approve(&mut admin, &own.id).await.unwrap_err();
    assert_eq!(reason(&err), "SELF_APPROVAL");

    // Until approved, the active policy decides.
    let (csr_pem, _) = csr("spiffe://dev.mintgate.local/workload/db/main", &[]);
    let node = server.node().await;
    node.enroll(enroll_request("db-1", &csr_pem)).await.unwrap();
    assert_eq!(decided_by(&server, "db-1").await, dev);

    let applied = approve(&mut bob, &proposal.id).await.unwrap();
    assert_eq!(applied.state(), v1::ProposalState::Applied);
    assert_eq!(applied.approved_by, BOB_ID);
    assert_eq!(active_version(&mut bob).await, version_of(&extended));
    let again = approve(&mut bob, &proposal.id).await.unwrap();
    assert_eq!(
        again.state(),
        v1::ProposalState::Applied,
        "approving again answers the same"
    );
    // admin's open proposal was made against the version just replaced.
    let err = approve(&mut bob, &own.id).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "PROPOSAL_SUPERSEDED")
    );

    // The new version decides at once, with its own forbid.
    let err = node
        .enroll(enroll_request("db-2", &csr_pem))
        .await
        .unwrap_err();
    assert_eq!(err.reason, "POLICY_DENIED");
    // The SDK hands over what the refusal names.
    assert_eq!(err.detail("determining_policies"), Some("no-db-workloads"));
    assert_eq!(
        err.detail("policy_version"),
        Some(version_of(&extended).as_str())
    );

    // Rollback is a proposal of the earlier text.
    let back = propose(&mut alice, "p-back", &PolicySource::dev()).await;
    assert_eq!(back.base_version, version_of(&extended));
    approve(&mut bob, &back.id).await.unwrap();
    assert_eq!(active_version(&mut bob).await, dev);
    node.enroll(enroll_request("db-3", &csr_pem)).await.unwrap();
    assert_eq!(decided_by(&server, "db-3").await, dev);

    // Every version is kept; each activation is in the history and the audit trail.
    let history = server.store().activations().await.unwrap();
    let versions: Vec<_> = history.iter().map(|a| a.version.as_str()).collect();
    assert_eq!(
        versions,
        [dev.as_str(), &version_of(&extended), dev.as_str()]
    );
    assert_eq!(history[1].activated_by, BOB_ID);
    assert_eq!(
        history[1].proposal_id.as_deref(),
        Some(proposal.id.as_str())
    );
    let chain = server.store().audit_chain().await.unwrap();
    let actions = |action: &str| chain.iter().filter(|e| e.event.action == action).count();
    assert_eq!(
        actions("policy.activated"),
        3,
        "bootstrap, change, rollback"
    );
    assert_eq!(actions("proposal.approved"), 2);
    assert_eq!(
        actions("proposal.created"),
        3,
        "p-1 (once), p-admin, p-back"
    );
    let approved = chain
        .iter()
        .find(|e| e.event.action == "proposal.approved")
        .unwrap();
    assert_eq!(approved.event.actor, BOB_ID);
    assert!(approved.event.detail.as_deref().unwrap().contains(ALICE_ID));
    // The stored history cannot be edited.
    let edit = server
        .store()
        .execute_raw("UPDATE policy_versions SET created_by = 'mallory'")
        .await;
    assert!(edit.is_err(), "policy versions are immutable");
    server.shutdown().await;
}

both_backends!(
    a_proposal_that_does_not_validate_is_refused_with_every_problem,
    invalid_proposals
);
async fn invalid_proposals(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let mut alice = server.admin_as("alice").await;
    let mut broken = PolicySource::dev();
    broken.files.push(PolicyFile {
        name: "broken.cedar".to_owned(),
        text: "@id(\"typo\")\npermit (principal, action == Action::\"Isue\", resource);\n"
            .to_owned(),
    });
    let err = alice
        .propose_policy(propose_request("bad-1", &broken, ""))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "POLICY_INVALID")
    );
    assert!(
        err.message().contains("broken.cedar:2"),
        "{}",
        err.message()
    );

    // Another trust domain is named, with both domains.
    let mut foreign = PolicySource::dev();
    foreign.files.push(PolicyFile {
        name: "other.cedar".to_owned(),
        text: "@id(\"other\")\npermit (principal, action, resource in TrustDomain::\"prod.example\");\n"
            .to_owned(),
    });
    let err = alice
        .propose_policy(propose_request("bad-2", &foreign, ""))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "TRUST_DOMAIN_MISMATCH");
    assert!(err.message().contains("prod.example"), "{}", err.message());
    assert!(
        err.message().contains("dev.mintgate.local"),
        "{}",
        err.message()
    );
    let err = alice
        .propose_role_binding(v1::ProposeRoleBindingRequest {
            request_id: "rb-foreign".into(),
            operator: "spiffe://prod.example/operator/eve".into(),
            role: "auditor".into(),
            valid_until: None,
            remove: false,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "TRUST_DOMAIN_MISMATCH");
    assert!(
        err.message().contains("prod.example") && err.message().contains("dev.mintgate.local"),
        "{}",
        err.message()
    );

    // The active version again, a bad file name, an unknown role.
    let err = alice
        .propose_policy(propose_request("same", &PolicySource::dev(), ""))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "POLICY_UNCHANGED");
    let mut named = stricter_policy();
    named.files.last_mut().unwrap().name = "../no-db.cedar".to_owned();
    let err = alice
        .propose_policy(propose_request("name", &named, ""))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "POLICY_INVALID");
    let err = alice
        .propose_role_binding(v1::ProposeRoleBindingRequest {
            request_id: "rb-unknown".into(),
            operator: BOB_ID.into(),
            role: "superuser".into(),
            valid_until: None,
            remove: false,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ROLE_UNKNOWN");
    // Nothing was stored.
    let listed = alice
        .list_proposals(v1::ListProposalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.proposals.is_empty(), "{listed:?}");
    server.shutdown().await;
}

both_backends!(
    a_shadowed_policy_counts_and_logs_every_disagreement,
    shadow_disagreements
);
async fn shadow_disagreements(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let mut alice = server.admin_as("alice").await;
    let proposal = propose(&mut alice, "p-shadow", &stricter_policy()).await;
    let shadowed = alice
        .shadow_policy(v1::ShadowPolicyRequest {
            proposal_id: proposal.id.clone(),
            stop: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shadowed.shadow_version, proposal.policy_version);

    let node = server.node().await;
    let (db_csr, _) = csr("spiffe://dev.mintgate.local/workload/db/main", &[]);
    let (web_csr, _) = csr(WORKLOAD, &[]);
    // The active policy decides: both are issued; the shadow would refuse the first.
    node.enroll(enroll_request("s-db", &db_csr)).await.unwrap();
    node.enroll(enroll_request("s-web", &web_csr))
        .await
        .unwrap();
    let scrape = Scrape::take(&server).await;
    let disagreements = "mintgate_policy_shadow_disagreements_total";
    assert_eq!(
        scrape.value(disagreements, &[("active", "allow"), ("shadow", "deny")]),
        1.0
    );
    assert_eq!(
        scrape.value(disagreements, &[]),
        1.0,
        "the agreeing decision is not counted"
    );

    alice
        .shadow_policy(v1::ShadowPolicyRequest {
            proposal_id: proposal.id.clone(),
            stop: true,
        })
        .await
        .unwrap();
    node.enroll(enroll_request("s-db-2", &db_csr))
        .await
        .unwrap();
    let scrape = Scrape::take(&server).await;
    assert_eq!(
        scrape.value(disagreements, &[]),
        1.0,
        "no shadow, nothing compared"
    );
    let chain = server.store().audit_chain().await.unwrap();
    assert!(
        chain
            .iter()
            .any(|e| e.event.action == "policy.shadow_started")
    );
    assert!(
        chain
            .iter()
            .any(|e| e.event.action == "policy.shadow_stopped")
    );
    server.shutdown().await;
}

both_backends!(
    racing_approvals_activate_one_version_and_refuse_the_other,
    racing_proposals
);
async fn racing_proposals(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let mut alice = server.admin_as("alice").await;
    let first = propose(&mut alice, "race-1", &extended_policy()).await;
    let second = propose(&mut alice, "race-2", &stricter_policy()).await;
    let (mut bob_1, mut bob_2) = (server.admin_as("bob").await, server.admin_as("bob").await);
    let (a, b) = tokio::join!(
        approve(&mut bob_1, &first.id),
        approve(&mut bob_2, &second.id)
    );
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        other => panic!("exactly one approval wins: {other:?}"),
    };
    assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
    assert!(
        ["PROPOSAL_SUPERSEDED", "PROPOSAL_STALE"].contains(&reason(&lost).as_str()),
        "{lost:?}"
    );
    assert!(lost.message().contains(&won.id) || lost.message().contains(&won.policy_version));
    assert_eq!(active_version(&mut alice).await, won.policy_version);
    assert_eq!(server.store().activations().await.unwrap().len(), 2);
    server.shutdown().await;
}

both_backends!(a_changed_policy_directory_is_reported_never_applied, drift);
async fn drift(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let dev = version_of(&PolicySource::dev());
    let stopped = server.stop().await;
    // Restarted with another directory (and other operators): both are ignored.
    let server = stopped
        .start_with(Options {
            policy: Some(stricter_policy()),
            operators: Some(Default::default()),
            ..Options::new(backend)
        })
        .await;
    assert_eq!(
        server
            .store()
            .active_policy()
            .await
            .unwrap()
            .unwrap()
            .0
            .version,
        dev
    );
    let scrape = Scrape::take(&server).await;
    assert_eq!(scrape.value("mintgate_policy_drift", &[]), 1.0);
    let (db_csr, _) = csr("spiffe://dev.mintgate.local/workload/db/main", &[]);
    server
        .node()
        .await
        .enroll(enroll_request("d-1", &db_csr))
        .await
        .unwrap();
    assert_eq!(decided_by(&server, "d-1").await, dev);
    assert_eq!(
        active_version(&mut server.admin_as("bob").await).await,
        dev,
        "the stored role bindings still hold"
    );

    // `mintgate policy diff` shows the same, and exits 1.
    let dir = tempfile::tempdir().unwrap();
    let write = |source: &PolicySource| {
        std::fs::write(dir.path().join("schema.cedarschema"), &source.schema).unwrap();
        for f in &source.files {
            std::fs::write(dir.path().join(&f.name), &f.text).unwrap();
        }
    };
    let diff = |dir: &std::path::Path| {
        std::process::Command::new(mintgate_tests::mintgate_bin())
            .args(["policy", "diff"])
            .arg(dir)
            .args(["--database-url", &server.database_url])
            .output()
            .unwrap()
    };
    write(&stricter_policy());
    let out = diff(dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("active version {dev}")),
        "{stdout}"
    );
    assert!(stdout.contains("+++ b/no-db.cedar"), "{stdout}");
    std::fs::remove_file(dir.path().join("no-db.cedar")).unwrap();
    let out = diff(dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    server.shutdown().await;
}
