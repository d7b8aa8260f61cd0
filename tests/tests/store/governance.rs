//! Change control in the store: the first policy is activated once, proposals are idempotent
//! per author and request id, an approval applies its change in the same transaction or not at
//! all, and of two policy proposals made against one version only one can ever be applied.

use mintgate_domain::governance::{
    Bootstrapped, Change, GovernanceStore, NewProposal, ProposalInserted, ProposalState,
    RoleBinding, StoredPolicy,
};
use mintgate_domain::policy::{PolicyFile, PolicySource};
use mintgate_domain::store::StoreError;
use mintgate_tests::{Backend, both_backends};

use crate::{Harness, OPERATOR, at, event};

const ALICE: &str = "spiffe://dev.mintgate.local/operator/alice";
const BOB: &str = "spiffe://dev.mintgate.local/operator/bob";

fn policy(version: &str, text: &str) -> StoredPolicy {
    StoredPolicy {
        version: version.to_owned(),
        source: PolicySource {
            schema: "entity TrustDomain;".to_owned(),
            files: vec![PolicyFile {
                name: "a.cedar".to_owned(),
                text: text.to_owned(),
            }],
        },
        created_at: at(0),
        created_by: OPERATOR.to_owned(),
    }
}

fn policy_proposal(id: &str, request_id: &str, version: &str) -> NewProposal {
    NewProposal {
        id: id.to_owned(),
        author: ALICE.to_owned(),
        request_id: request_id.to_owned(),
        payload_hash: format!("hash-{version}"),
        change: Change::Policy {
            version: version.to_owned(),
            base_version: "v1".to_owned(),
            label: Some("CHG-1".to_owned()),
        },
        created_at: at(10),
        expires_at: at(1000),
    }
}

async fn bootstrapped(h: &Harness) {
    let binding = RoleBinding {
        operator: BOB.to_owned(),
        role: "policy-approver".to_owned(),
        valid_until: None,
        granted_by: "bootstrap".to_owned(),
        granted_at: at(0),
        proposal_id: None,
    };
    let done = h
        .store
        .bootstrap(
            policy("v1", "first"),
            vec![binding],
            vec![event("policy.activated", "policy:v1")],
        )
        .await
        .unwrap();
    assert_eq!(done, Bootstrapped::Done);
}

both_backends!(the_first_policy_is_activated_once, bootstrap_once);
async fn bootstrap_once(backend: Backend) {
    let h = Harness::open(backend).await;
    assert!(h.store.active_policy().await.unwrap().is_none());
    bootstrapped(&h).await;
    let again = h
        .store
        .bootstrap(
            policy("v9", "other"),
            Vec::new(),
            vec![event("policy.activated", "policy:v9")],
        )
        .await
        .unwrap();
    assert!(matches!(again, Bootstrapped::Already(a) if a.version == "v1"));
    let (activation, stored) = h.store.active_policy().await.unwrap().unwrap();
    assert_eq!((activation.seq, activation.version.as_str()), (1, "v1"));
    assert_eq!(stored.source.files[0].text, "first");
    assert_eq!(
        h.count("policy_versions").await,
        1,
        "nothing of the second was written"
    );
    assert_eq!(h.store.role_bindings_of(BOB).await.unwrap().len(), 1);
    // The history refuses edits and deletions.
    assert!(
        h.execute("UPDATE policy_versions SET files = '[]'")
            .await
            .is_err()
    );
    assert!(h.execute("DELETE FROM policy_activations").await.is_err());
    h.finish().await;
}

both_backends!(
    of_two_policy_proposals_against_one_version_only_one_is_applied,
    one_of_two
);
async fn one_of_two(backend: Backend) {
    let h = Harness::open(backend).await;
    bootstrapped(&h).await;
    for (id, rid, version) in [("p-a", "r-a", "v2"), ("p-b", "r-b", "v3")] {
        let inserted = h
            .store
            .insert_proposal(
                policy_proposal(id, rid, version),
                Some(policy(version, version)),
                vec![event("proposal.created", id)],
            )
            .await
            .unwrap();
        assert!(matches!(inserted, ProposalInserted::New(_)));
    }
    // The same author and request id again: the first proposal, nothing written.
    let dup = h
        .store
        .insert_proposal(
            policy_proposal("p-c", "r-a", "v2"),
            None,
            vec![event("proposal.created", "p-c")],
        )
        .await
        .unwrap();
    assert!(matches!(dup, ProposalInserted::Duplicate(p) if p.id == "p-a"));

    // Both approved at once, from two replicas: one activation, one conflict.
    let replica = h.replica().await;
    let (a, b) = tokio::join!(
        h.store
            .apply_proposal("p-a", BOB, at(20), vec![event("policy.activated", "v2")]),
        replica.apply_proposal("p-b", BOB, at(20), vec![event("policy.activated", "v3")]),
    );
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        other => panic!("exactly one applies: {other:?}"),
    };
    assert!(matches!(lost, StoreError::Conflict(_)), "{lost:?}");
    assert_eq!(won.state, ProposalState::Applied);
    let loser = if won.id == "p-a" { "p-b" } else { "p-a" };
    let loser = h.store.proposal(loser).await.unwrap().unwrap();
    assert_eq!(loser.state, ProposalState::Superseded);
    assert_eq!(loser.superseded_by.as_deref(), Some(won.id.as_str()));
    let activations = h.store.activations().await.unwrap();
    assert_eq!(activations.len(), 2);
    assert_eq!(activations[1].proposal_id.as_deref(), Some(won.id.as_str()));
    assert_eq!(activations[1].label.as_deref(), Some("CHG-1"));
    // Applied once: approving again conflicts and writes nothing.
    let events = h.count("audit_events").await;
    let again = h
        .store
        .apply_proposal(
            &won.id,
            BOB,
            at(30),
            vec![event("policy.activated", "again")],
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
    assert_eq!(h.count("audit_events").await, events);
    replica.close().await;
    h.finish().await;
}

both_backends!(
    a_role_binding_is_set_and_removed_by_its_proposal,
    role_binding_changes
);
async fn role_binding_changes(backend: Backend) {
    let h = Harness::open(backend).await;
    bootstrapped(&h).await;
    let change = |id: &str, remove: bool, valid_until| NewProposal {
        id: id.to_owned(),
        author: ALICE.to_owned(),
        request_id: id.to_owned(),
        payload_hash: id.to_owned(),
        change: Change::RoleBinding {
            operator: ALICE.to_owned(),
            role: "approver".to_owned(),
            valid_until,
            remove,
        },
        created_at: at(10),
        expires_at: at(100),
    };
    for (id, remove, until) in [("grant", false, Some(at(50))), ("remove", true, None)] {
        h.store
            .insert_proposal(
                change(id, remove, until),
                None,
                vec![event("proposal.created", id)],
            )
            .await
            .unwrap();
    }
    h.store
        .apply_proposal("grant", BOB, at(20), vec![event("role.granted", "alice")])
        .await
        .unwrap();
    let roles = h.store.role_bindings_of(ALICE).await.unwrap();
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0].valid_until, Some(at(50)));
    assert_eq!(roles[0].proposal_id.as_deref(), Some("grant"));
    // Past its expiry a proposal is not applied.
    let late = h
        .store
        .apply_proposal("remove", BOB, at(100), vec![event("role.removed", "alice")])
        .await;
    assert!(matches!(late, Err(StoreError::Conflict(_))));
    h.store
        .apply_proposal("remove", BOB, at(99), vec![event("role.removed", "alice")])
        .await
        .unwrap();
    assert!(h.store.role_bindings_of(ALICE).await.unwrap().is_empty());
    h.finish().await;
}
