//! Group commit: concurrent issuance writes share one durable commit, and a write that fails in a
//! batch leaves nothing behind while the rest of the batch commits.

use futures_util::future::join_all;
use mintgate_domain::audit::verify_chain;
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::store::{CertificateStore, Inserted, StoreError};
use mintgate_store::Unready;
use mintgate_tests::db::hold_write_lock;
use mintgate_tests::{Backend, both_backends};

use crate::{Harness, NODE, WORKLOAD, actions, event, request, serial, subject};

const WRITES: usize = 40;

both_backends!(
    concurrent_writes_share_a_commit_and_a_failed_one_leaves_nothing,
    shared_commit
);
async fn shared_commit(backend: Backend) {
    let h = Harness::open(backend).await;
    let pre = h.approved(NODE, "pre", &serial(90)).await;
    let commits = h.store.write_commits();

    // Hold the database's write lock so that every write below queues before any commits.
    let lock = hold_write_lock(&h.raw).await;

    let inserts = (0..WRITES).map(|i| {
        let id = format!("r-{i}");
        let r = request(NODE, &id, RequestState::Approved, Some(serial(i as u8 + 1)));
        let audit = vec![event("request.approved", &subject(NODE, &id))];
        h.store.insert_request(r, None, audit)
    });
    // In the same batch: a duplicate of r-0, and an issuance that moves its request to ISSUED
    // and then fails (the certificate it would supersede does not exist).
    let duplicate = request(NODE, "r-0", RequestState::Approved, Some(serial(100)));
    let duplicate = h
        .store
        .insert_request(duplicate, None, vec![event("x", "dup")]);
    let (new, missing) = (serial(90), serial(91));
    let failed = h.issue(pre, &new, Some(&missing), &["certificate.issued"]);
    let released = async {
        tokio::task::yield_now().await;
        lock.commit().await.unwrap();
    };
    let (inserted, duplicate, failed, ()) =
        tokio::join!(join_all(inserts), duplicate, failed, released);

    let pks: Vec<i64> = inserted
        .into_iter()
        .map(|r| match r.unwrap() {
            Inserted::New(pk) => pk,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(pks.len(), WRITES);
    match duplicate.unwrap() {
        Inserted::Duplicate(r) => assert_eq!((r.pk, r.serial), (pks[0], Some(serial(1)))),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(failed, Err(StoreError::Conflict("certificate"))),
        "{failed:?}"
    );

    // The writes queued behind the lock went in at most two commits (the writer may have
    // taken the first before the others arrived).
    let used = h.store.write_commits() - commits;
    assert!(
        (1..=2).contains(&used),
        "{used} commits for {WRITES} writes"
    );

    // Every answered write is durable, and nothing of the failed ones is.
    let h = h.reopen().await;
    assert_eq!(h.count("requests").await, WRITES as i64 + 1);
    let pre = h.store.find_request(NODE, "pre").await.unwrap().unwrap();
    assert_eq!(
        pre.state,
        RequestState::Approved,
        "rolled back to its savepoint"
    );
    assert_eq!(h.count("certificates").await, 0);
    let chain = h.chain().await;
    assert_eq!(actions(&chain), ["request.approved"; WRITES + 1]);
    assert_eq!(verify_chain(chain), Ok(WRITES as u64 + 1));
    h.finish().await;
}

both_backends!(
    a_block_committed_after_approval_stops_the_issuance,
    blocked_after_approval
);
async fn blocked_after_approval(backend: Backend) {
    let h = Harness::open(backend).await;
    let pk = h.approved(NODE, "r-1", &serial(1)).await;
    h.execute(&format!(
        "INSERT INTO identity_blocks (spiffe_id, reason, blocked_by, blocked_at) \
         VALUES ('{WORKLOAD}', 'KEY_COMPROMISE', '{NODE}', 0)"
    ))
    .await
    .unwrap();
    let refused = h.issue(pk, &serial(1), None, &["certificate.issued"]).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict("identity blocked"))),
        "{refused:?}"
    );
    let request = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    assert_eq!(request.state, RequestState::Approved);
    assert_eq!(h.count("certificates").await, 0);
    assert_eq!(actions(&h.chain().await), ["request.approved"]);
    h.finish().await;
}

both_backends!(
    a_batch_that_cannot_commit_stores_nothing_and_the_writer_goes_on,
    failed_batch
);
async fn failed_batch(backend: Backend) {
    let h = Harness::open(backend).await;
    let pk = h.approved(NODE, "r-1", &serial(1)).await;
    let chain = h.chain().await;
    // Without its table, recording the certificate fails when the batch is committed, after
    // every write in it has run.
    h.execute("ALTER TABLE certificates RENAME TO certificates_away")
        .await
        .unwrap();
    let reserved = serial(1);
    let issued = h.issue(pk, &reserved, None, &["certificate.issued"]);
    let fresh = request(NODE, "r-2", RequestState::Approved, Some(serial(2)));
    let inserted = h
        .store
        .insert_request(fresh, None, vec![event("request.approved", "r-2")]);
    let (issued, inserted) = tokio::join!(issued, inserted);

    assert!(
        matches!(issued, Err(StoreError::Unavailable(_))),
        "{issued:?}"
    );
    let r1 = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    assert_eq!(r1.state, RequestState::Approved, "nothing of it was kept");
    // The insert shared the batch (nothing is kept) or committed before it (all is kept).
    let r2 = h.store.find_request(NODE, "r-2").await.unwrap();
    match inserted {
        Ok(Inserted::New(_)) => assert!(r2.is_some()),
        Err(StoreError::Unavailable(_)) => assert_eq!(r2, None),
        other => panic!("{other:?}"),
    }
    let kept = usize::from(r2.is_some());
    assert_eq!(h.chain().await.len(), chain.len() + kept);
    // Until a write commits again, the store says it cannot (what /readyz reports).
    let again = h.issue(pk, &reserved, None, &["certificate.issued"]).await;
    assert!(
        matches!(again, Err(StoreError::Unavailable(_))),
        "{again:?}"
    );
    assert_eq!(h.store.health(), Err(Unready::WriteFailed));

    // The writer goes on once the table is back.
    h.execute("ALTER TABLE certificates_away RENAME TO certificates")
        .await
        .unwrap();
    h.issue(pk, &serial(1), None, &["certificate.issued"])
        .await
        .unwrap();
    assert_eq!(h.count("certificates").await, 1);
    assert_eq!(
        verify_chain(h.chain().await),
        Ok(chain.len() as u64 + kept as u64 + 1)
    );
    h.finish().await;
}

/// SQLite is built with its query planner stability guarantee (`.cargo/config.toml`). Without
/// it, every statement with a bound LIMIT (every `one()`, the read before an issuance) is
/// prepared again each time it runs, which cost 12% of the server's CPU per issuance.
#[tokio::test]
async fn sqlite_keeps_its_prepared_statements_across_runs() {
    let h = Harness::open(Backend::Sqlite).await;
    let qpsg: i64 = h
        .scalar(
            "SELECT COUNT(*) FROM pragma_compile_options \
             WHERE compile_options = 'ENABLE_QPSG'",
        )
        .await;
    assert_eq!(qpsg, 1, "SQLite was built without SQLITE_ENABLE_QPSG");
    h.finish().await;
}

/// SQLite keeps no allocation statistics and gives each connection a page cache of its own
/// (`.cargo/config.toml`): with either, every allocation or page fetch of the readers and the
/// writer took one process-wide mutex, and they waited on each other for it.
#[tokio::test]
async fn sqlite_connections_share_no_mutex_for_memory() {
    let h = Harness::open(Backend::Sqlite).await;
    for (option, built_in, why) in [
        ("DEFAULT_MEMSTATUS=0", 1, "memory statistics are on"),
        (
            "ENABLE_MEMORY_MANAGEMENT",
            0,
            "the connections share one page cache",
        ),
    ] {
        let sql = format!(
            "SELECT COUNT(*) FROM pragma_compile_options WHERE compile_options = '{option}'"
        );
        assert_eq!(h.scalar::<i64>(&sql).await, built_in, "{why}");
    }
    h.finish().await;
}
