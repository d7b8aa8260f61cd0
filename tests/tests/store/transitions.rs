//! Conditional transitions: applied from the state they expect they move the row and append
//! their audit events in one transaction; from any other state they change nothing at all.

use mintgate_domain::lifecycle::{CertState, RequestState};
use mintgate_domain::model::CertificateRecord;
use mintgate_domain::store::{CertificateStore, StoreError};
use mintgate_tests::{Backend, both_backends};

use crate::{Harness, NODE, WORKLOAD, actions, at, certificate, event, request, serial, subject};

both_backends!(move_request_applies_only_from_the_expected_state, moves);
async fn moves(backend: Backend) {
    use RequestState::{Approved, Failed, PendingApproval, Verified};
    let h = Harness::open(backend).await;
    let audit = vec![event("request.pending", &subject(NODE, "r-1"))];
    let pending = request(NODE, "r-1", PendingApproval, None);
    h.store.insert_request(pending, None, audit).await.unwrap();
    let before = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    let chain = h.chain().await;
    let pk = before.pk;

    // Wrong state, wrong serial, wrong request: nothing moves and nothing is recorded.
    let approved = (Approved, Some(serial(1)));
    for (pk, from) in [
        (pk, (Verified, None)),
        (pk, (PendingApproval, Some(serial(9)))),
        (pk + 1000, (PendingApproval, None)),
    ] {
        let moved = h.step(pk, from.clone(), approved.clone(), 10, "x").await;
        assert!(!moved, "moved from {from:?}");
    }
    let unchanged = h.store.find_request(NODE, "r-1").await.unwrap();
    assert_eq!(unchanged, Some(before));
    assert_eq!(h.chain().await, chain);

    // The right state: the row moves, reserves the serial, and its event is appended.
    let pending = (PendingApproval, None);
    let moved = h.step(
        pk,
        pending.clone(),
        approved.clone(),
        10,
        "request.approved",
    );
    assert!(moved.await);
    let after = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    assert_eq!((after.state, after.serial), approved);
    assert_eq!((after.created_at, after.updated_at), (at(0), at(10)));
    let expected = ["request.pending", "request.approved"];
    assert_eq!(actions(&h.chain().await), expected);

    // Applying the same transition again loses: it already happened.
    assert!(!h.step(pk, pending, approved.clone(), 20, "x").await);
    assert_eq!(actions(&h.chain().await), expected);

    // A failed issuance is retried with a fresh serial (APPROVED → FAILED → APPROVED).
    let failed = (Failed, Some(serial(1)));
    let retried = (Approved, Some(serial(2)));
    assert!(
        h.step(pk, approved, failed.clone(), 30, "request.failed")
            .await
    );
    assert!(
        h.step(pk, failed, retried.clone(), 40, "request.retried")
            .await
    );
    let last = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    assert_eq!((last.state, last.serial), retried);
    assert_eq!(last.updated_at, at(40));
    assert_eq!(h.chain().await.len(), 4);
    h.finish().await;
}

both_backends!(
    complete_issuance_applies_only_to_the_approved_serial,
    issuance
);
async fn issuance(backend: Backend) {
    let h = Harness::open(backend).await;
    let pending = request(NODE, "r-0", RequestState::PendingApproval, Some(serial(1)));
    h.store.insert_request(pending, None, vec![]).await.unwrap();
    let pending_pk = h.store.find_request(NODE, "r-0").await.unwrap().unwrap().pk;
    let pk = h.approved(NODE, "r-1", &serial(2)).await;
    let before = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    let chain = h.chain().await;

    // Not APPROVED, another serial than the one reserved, or an unknown request: refused whole.
    for (pk, serial) in [
        (pending_pk, serial(1)),
        (pk, serial(3)),
        (pk + 1000, serial(2)),
    ] {
        let refused = h.issue(pk, &serial, None, &["x"]).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict("request"))),
            "{refused:?}"
        );
        assert_eq!(h.store.certificate(&serial).await.unwrap(), None);
    }
    assert_eq!(
        h.store.find_request(NODE, "r-1").await.unwrap(),
        Some(before)
    );
    assert_eq!(h.count("certificates").await, 0);
    assert_eq!(h.chain().await, chain);

    h.issue(pk, &serial(2), None, &["certificate.issued"])
        .await
        .unwrap();
    let issued = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    assert_eq!(
        (issued.state, issued.updated_at),
        (RequestState::Issued, at(1))
    );
    let new = certificate(&serial(2));
    let expected = CertificateRecord {
        serial: serial(2),
        spiffe_id: WORKLOAD.to_owned(),
        state: CertState::Active,
        key_type: new.key_type,
        not_before: new.not_before,
        not_after: new.not_after,
        der: new.der,
        chain_pem: new.chain_pem,
        request_pk: pk,
        issuer_key_id: Some(new.issuer_key_id),
    };
    assert_eq!(
        h.store.certificate(&serial(2)).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(
        actions(&h.chain().await),
        ["request.approved", "certificate.issued"]
    );

    // Issuing twice is refused and leaves the certificate as it was.
    let twice = h.issue(pk, &serial(2), None, &["x"]).await;
    assert!(
        matches!(twice, Err(StoreError::Conflict("request"))),
        "{twice:?}"
    );
    assert_eq!(
        h.store.certificate(&serial(2)).await.unwrap(),
        Some(expected)
    );
    assert_eq!(h.chain().await.len(), 2);
    h.finish().await;
}

both_backends!(a_renewal_supersedes_the_old_certificate_atomically, renewal);
async fn renewal(backend: Backend) {
    let h = Harness::open(backend).await;
    let (old, new, late) = (serial(1), serial(2), serial(3));
    let first = h.approved(NODE, "r-1", &old).await;
    h.issue(first, &old, None, &["certificate.issued"])
        .await
        .unwrap();
    let state = async |serial| h.store.certificate(serial).await.unwrap().map(|c| c.state);

    let renew = h.approved(WORKLOAD, "renew-1", &new).await;
    let audit = ["certificate.issued", "certificate.superseded"];
    h.issue(renew, &new, Some(&old), &audit).await.unwrap();
    assert_eq!(state(&old).await, Some(CertState::Superseded));
    assert_eq!(state(&new).await, Some(CertState::Active));
    let chain = h.chain().await;
    assert_eq!(actions(&chain)[3..], audit);

    // A second renewal of the already superseded certificate loses as a whole: its request
    // stays APPROVED, no certificate is recorded, and nothing is audited.
    let second = h.approved(WORKLOAD, "renew-2", &late).await;
    let before = h.store.find_request(WORKLOAD, "renew-2").await.unwrap();
    let chain = h.chain().await;
    let lost = h.issue(second, &late, Some(&old), &["x"]).await;
    assert!(
        matches!(lost, Err(StoreError::Conflict("certificate"))),
        "{lost:?}"
    );
    let after = h.store.find_request(WORKLOAD, "renew-2").await.unwrap();
    assert_eq!(after, before);
    assert_eq!(state(&late).await, None);
    assert_eq!(state(&old).await, Some(CertState::Superseded));
    assert_eq!(h.chain().await, chain);
    h.finish().await;
}
