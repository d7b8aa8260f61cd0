//! Requests keyed by (caller, request_id): stored whole, inserted once however often or however
//! concurrently they are retried, and kept apart between callers.

use mintgate_domain::audit::{AuditEvent, verify_chain};
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::model::{HoldTerms, NewRequest, RequestKind, RequestRecord};
use mintgate_domain::policy::PolicyDecision;
use mintgate_domain::risk::{RiskAssessment, RiskTier, Signal};
use mintgate_domain::store::{CertificateStore, Inserted};
use mintgate_tests::{Backend, both_backends};
use tokio::task::JoinSet;

use crate::{Harness, NODE, OTHER_NODE, WORKLOAD, at, event, request, serial, subject};

both_backends!(insert_then_find_round_trips_every_field, round_trip);
async fn round_trip(backend: Backend) {
    let h = Harness::open(backend).await;
    assert_eq!(h.store.find_request(NODE, "r-1").await.unwrap(), None);
    let new = NewRequest {
        kind: RequestKind::Renew,
        reason: Some("POLICY_DENIED".to_owned()),
        token_id: Some("tok-1".to_owned()),
        token_expires_at: Some(at(900)),
        decision: Some(PolicyDecision {
            policy_version: "ab".repeat(32),
            policies: vec!["no-db".to_owned(), "web:2".to_owned()],
        }),
        now: at(5),
        risk: Some(RiskAssessment {
            score: 50,
            tier: RiskTier::Elevated,
            signals: vec![Signal::FirstIssuance, Signal::ManyIdentities],
        }),
        hold: Some(HoldTerms {
            reason: "elevated risk".to_owned(),
            quorum: 2,
            expires_at: at(3605),
        }),
        ..request(NODE, "r-1", RequestState::PendingApproval, Some(serial(1)))
    };
    let sent = event("request.pending", &subject(NODE, "r-1"));
    let Inserted::New(pk) = h
        .store
        .insert_request(new.clone(), None, vec![sent.clone()])
        .await
        .unwrap()
    else {
        panic!("a first insert must be new");
    };

    let expected = RequestRecord {
        pk,
        caller: new.caller,
        request_id: new.request_id,
        kind: RequestKind::Renew,
        payload_hash: new.payload_hash,
        state: RequestState::PendingApproval,
        reason: Some("POLICY_DENIED".to_owned()),
        spiffe_id: WORKLOAD.to_owned(),
        serial: Some(serial(1)),
        token_id: Some("tok-1".to_owned()),
        token_expires_at: Some(at(900)),
        decision: new.decision.clone(),
        created_at: at(5),
        updated_at: at(5),
        lease_holder: Some(h.store.instance_id()),
        risk: new.risk.clone(),
        hold: new.hold.clone(),
    };
    assert_eq!(
        h.store.find_request(NODE, "r-1").await.unwrap(),
        Some(expected)
    );
    let chain = h.chain().await;
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0].event, AuditEvent { seq: 1, ..sent });
    h.finish().await;
}

both_backends!(
    a_repeated_request_id_is_a_duplicate_and_writes_nothing,
    duplicate
);
async fn duplicate(backend: Backend) {
    let h = Harness::open(backend).await;
    let pk = h.approved(NODE, "r-1", &serial(1)).await;
    let stored = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    let chain = h.chain().await;

    let retry = NewRequest {
        payload_hash: "f".repeat(64),
        now: at(60),
        ..request(NODE, "r-1", RequestState::Denied, Some(serial(2)))
    };
    let again = h
        .store
        .insert_request(retry, None, vec![event("request.denied", "retry")])
        .await
        .unwrap();
    assert_eq!(again, Inserted::Duplicate(Box::new(stored.clone())));
    assert_eq!(
        h.store.find_request(NODE, "r-1").await.unwrap(),
        Some(stored)
    );
    assert_eq!(h.count("requests").await, 1);
    assert_eq!(h.chain().await, chain, "a duplicate appends no audit event");

    // The same request id from another caller is another request.
    let other_pk = h.approved(OTHER_NODE, "r-1", &serial(3)).await;
    assert_ne!(other_pk, pk);
    let other = h.store.find_request(OTHER_NODE, "r-1").await.unwrap();
    assert_eq!(
        other.map(|r| (r.pk, r.serial)),
        Some((other_pk, Some(serial(3))))
    );
    let mine = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    assert_eq!((mine.pk, mine.serial), (pk, Some(serial(1))));
    assert_eq!(h.count("requests").await, 2);
    assert_eq!(h.chain().await.len(), 2);
    h.finish().await;
}

both_backends!(
    concurrent_inserts_of_one_request_id_make_one_request,
    racing
);
async fn racing(backend: Backend) {
    const TASKS: u8 = 50;
    let h = Harness::open(backend).await;
    let mut tasks = JoinSet::new();
    for n in 1..=TASKS {
        let store = h.store.clone();
        tasks.spawn(async move {
            let request = request(NODE, "r-1", RequestState::Approved, Some(serial(n)));
            let audit = vec![event("request.approved", &format!("serial:{}", serial(n)))];
            store.insert_request(request, None, audit).await.unwrap()
        });
    }
    let results = tasks.join_all().await;

    let stored = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    let new = results
        .iter()
        .filter(|r| **r == Inserted::New(stored.pk))
        .count();
    assert_eq!(new, 1, "exactly one insert wins: {results:?}");
    let duplicates = results
        .iter()
        .filter(|r| **r == Inserted::Duplicate(Box::new(stored.clone())))
        .count();
    assert_eq!(duplicates, usize::from(TASKS) - 1, "{results:?}");
    assert_eq!(h.count("requests").await, 1);

    // One event, and it is the winner's: written in the winner's transaction.
    let chain = h.chain().await;
    assert_eq!(chain.len(), 1);
    let winner = stored.serial.unwrap();
    assert_eq!(chain[0].event.subject, format!("serial:{winner}"));
    assert_eq!(verify_chain(chain), Ok(1));
    h.finish().await;
}
