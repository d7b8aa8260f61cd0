//! Approval leases name their holder: each opened store is a server instance, recorded on the
//! requests it takes to APPROVED, and it tells a holder that still runs from one that is gone.

use mintgate_domain::lifecycle::RequestState::Approved;
use mintgate_domain::store::CertificateStore;
use mintgate_tests::{Backend, both_backends};

use crate::{Harness, NODE, event, serial};

both_backends!(
    a_request_is_held_by_the_instance_that_took_it_to_approved,
    holder_recorded
);
async fn holder_recorded(backend: Backend) {
    let h = Harness::open(backend).await;
    let pk = h.approved(NODE, "r-1", &serial(1)).await;
    let holder = |r: Option<mintgate_domain::model::RequestRecord>| r.unwrap().lease_holder;
    assert_eq!(
        holder(h.store.find_request(NODE, "r-1").await.unwrap()),
        Some(h.store.instance_id())
    );

    // Another instance that takes the request over becomes its holder; one that loses the race
    // changes nothing.
    let next = h.replica().await;
    assert_ne!(next.instance_id(), h.store.instance_id());
    let retried = vec![event("request.retried", "r-1")];
    let from = (Approved, Some(serial(1)));
    let to = (Approved, Some(serial(2)));
    assert!(
        next.move_request(pk, from.clone(), to, crate::at(1), retried.clone())
            .await
            .unwrap()
    );
    assert!(
        !h.store
            .move_request(pk, from, (Approved, Some(serial(3))), crate::at(2), retried)
            .await
            .unwrap()
    );
    let stored = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    assert_eq!(
        (stored.serial, stored.lease_holder),
        (Some(serial(2)), Some(next.instance_id()))
    );
    next.close().await;
    h.finish().await;
}

both_backends!(
    a_holder_is_alive_while_its_store_is_open_and_gone_once_closed,
    liveness
);
async fn liveness(backend: Backend) {
    let h = Harness::open(backend).await;
    let other = h.replica().await;
    let id = other.instance_id();
    assert!(
        other.lease_holder_alive(id).await.unwrap(),
        "an instance is alive to itself"
    );
    let seen_by_another = h.store.lease_holder_alive(id).await.unwrap();
    match backend {
        // Replicas share PostgreSQL: a running one holds its leases.
        Backend::Postgres => assert!(seen_by_another, "a running replica is alive"),
        // SQLite has one writer: a store finding another instance's lease finds a dead one's.
        Backend::Sqlite => assert!(!seen_by_another, "on SQLite only this store runs"),
    }
    other.close().await;
    assert!(
        !h.store.lease_holder_alive(id).await.unwrap(),
        "a closed instance is gone"
    );
    h.finish().await;
}
