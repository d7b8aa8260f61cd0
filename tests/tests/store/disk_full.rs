//! A full disk: a write is answered as done only if it is stored, a write that cannot commit
//! leaves nothing behind, the store says it is not ready meanwhile, and it recovers by itself
//! once space returns. On SQLite the database and its WAL are on a tmpfs the test fills; on
//! PostgreSQL the test database lives in a tablespace on one.

use std::time::Duration;

use mintgate_domain::audit::verify_chain;
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::store::{CertificateStore, Inserted, StoreError};
use mintgate_store::{SqlStore, Unready};
use mintgate_tests::disk::SmallDisk;
use mintgate_tests::{Backend, both_backends};

use crate::{Harness, NODE, actions, event, request, serial, subject};

/// Writes sent while the disk is full.
const DURING: usize = 120;

both_backends!(
    a_full_disk_answers_no_write_as_done_that_is_not_stored,
    disk_full
);
async fn disk_full(backend: Backend) {
    // PostgreSQL copies its template database (about 8 MiB) into the tablespace.
    let Some(disk) = SmallDisk::mount(24 * 1024 * 1024) else {
        return;
    };
    let h = Harness::open_in(backend, &disk.path().join("db")).await;
    let pk = h.approved(NODE, "before", &serial(1)).await;

    disk.fill();
    let mut stored = Vec::new();
    let mut refused = Vec::new();
    // One by one, so each answer is about that write alone; and a completion between them.
    for i in 0..DURING {
        let id = format!("full-{i}");
        match insert(&h.store, &id).await {
            Ok(()) => stored.push(id),
            Err(StoreError::Unavailable(_)) => {
                refused.push(id);
                assert_eq!(h.store.health(), Err(Unready::WriteFailed));
            }
            Err(e) => panic!("{id}: {e:?}"),
        }
        if i == DURING / 2 {
            let issued = h.issue(pk, &serial(1), None, &["certificate.issued"]).await;
            assert!(issued.is_ok() || matches!(issued, Err(StoreError::Unavailable(_))));
        }
    }
    assert!(
        !refused.is_empty(),
        "the disk filled but every write was answered as stored"
    );

    // Space returns: the probe finds the store can commit again, with no write needed.
    disk.free();
    wait_until_ready(&h.store).await;
    for i in 0..5 {
        let id = format!("after-{i}");
        insert(&h.store, &id).await.unwrap();
        stored.push(id);
    }
    // No transaction of the store's is left open: another writer gets the database.
    h.execute("BEGIN").await.unwrap();
    h.execute("ROLLBACK").await.unwrap();

    // After a restart, exactly what was answered as stored is there.
    let h = h.reopen().await;
    for id in &stored {
        let found = h.store.find_request(NODE, id).await.unwrap();
        assert!(found.is_some(), "{id} was answered as stored but is not");
    }
    for id in &refused {
        let found = h.store.find_request(NODE, id).await.unwrap();
        assert_eq!(found, None, "{id} was refused but is stored");
    }
    let chain = h.chain().await;
    let inserted = actions(&chain)
        .iter()
        .filter(|a| **a == "request.approved")
        .count();
    assert_eq!(inserted, stored.len() + 1, "one event per stored request");
    assert_eq!(
        verify_chain(chain),
        Ok(h.count("audit_events").await as u64)
    );
    h.finish().await;
}

async fn insert(store: &SqlStore, id: &str) -> Result<(), StoreError> {
    let r = request(NODE, id, RequestState::Approved, Some(serial(2)));
    let audit = vec![event("request.approved", &subject(NODE, id))];
    match store.insert_request(r, None, audit).await? {
        Inserted::New(_) => Ok(()),
        Inserted::Duplicate(r) => panic!("{id} is new, yet a duplicate of {r:?}"),
    }
}

/// Waits (bounded) for the store's probe to see it commit again.
async fn wait_until_ready(store: &SqlStore) {
    let ready = async {
        while store.health().is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), ready)
        .await
        .expect("the store did not become ready once space returned");
}
