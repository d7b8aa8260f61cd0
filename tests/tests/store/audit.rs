//! The audit trail: numbered 1..=n without gaps, hash-chained, refused to edits by the database
//! itself, kept across a restart, and still one chain when two replicas write at once.

use mintgate_domain::audit::verify_chain;
use mintgate_domain::lifecycle::RequestState::{Approved, Failed, Verified};
use mintgate_domain::store::{CertificateStore, Inserted};
use mintgate_tests::{Backend, both_backends};
use tokio::task::JoinSet;

use crate::{Harness, NODE, actions, event, request, serial};

/// The events [`mix`] leaves, in order.
const MIXED: [&str; 6] = [
    "request.approved",
    "certificate.issued",
    "request.denied",
    "policy.reloaded",
    "request.approved",
    "request.failed",
];

/// A mix of operations, including ones that lose and must append nothing.
async fn mix(h: &Harness) {
    let pk = h.approved(NODE, "r-1", &serial(1)).await;
    let retry = request(NODE, "r-1", Approved, Some(serial(9)));
    let duplicate = h.store.insert_request(retry, None, vec![event("x", "y")]);
    assert!(matches!(duplicate.await.unwrap(), Inserted::Duplicate(_)));
    h.issue(pk, &serial(1), None, &["certificate.issued"])
        .await
        .unwrap();
    assert!(h.issue(pk, &serial(1), None, &["x"]).await.is_err());
    let standalone = vec![event("request.denied", "a"), event("policy.reloaded", "b")];
    h.store.append_audit(standalone).await.unwrap();
    h.store.append_audit(vec![]).await.unwrap();
    let pk = h.approved(NODE, "r-2", &serial(2)).await;
    let failed = (Failed, Some(serial(2)));
    assert!(
        !h.step(pk, (Verified, Some(serial(2))), failed.clone(), 5, "x")
            .await
    );
    assert!(
        h.step(pk, (Approved, Some(serial(2))), failed, 5, "request.failed")
            .await
    );
}

both_backends!(
    the_chain_is_gap_free_and_verifies_after_mixed_operations,
    mixed
);
async fn mixed(backend: Backend) {
    let h = Harness::open(backend).await;
    mix(&h).await;
    let chain = h.chain().await;
    let seqs: Vec<i64> = chain.iter().map(|e| e.event.seq).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    assert_eq!(actions(&chain), MIXED);
    assert!(chain.windows(2).all(|w| w[1].prev_hash == w[0].hash));
    assert_eq!(verify_chain(chain), Ok(6));
    h.finish().await;
}

both_backends!(the_database_refuses_to_edit_the_audit_trail, append_only);
async fn append_only(backend: Backend) {
    let h = Harness::open(backend).await;
    mix(&h).await;
    let chain = h.chain().await;
    let mut edits = vec![
        "UPDATE audit_events SET actor = 'someone else' WHERE seq = 1",
        "UPDATE audit_events SET detail = NULL",
        "DELETE FROM audit_events WHERE seq = 6",
        "DELETE FROM audit_events",
    ];
    if backend == Backend::Postgres {
        edits.push("TRUNCATE audit_events");
    }
    for sql in edits {
        let refused = h.execute(sql).await.expect_err(sql).to_string();
        assert!(refused.contains("append-only"), "{sql}: {refused}");
        assert!(h.store.execute_raw(sql).await.is_err(), "{sql}");
    }
    assert_eq!(h.chain().await, chain);
    assert_eq!(verify_chain(chain), Ok(6));
    h.finish().await;
}

both_backends!(
    a_reopened_store_sees_the_same_data_and_continues_the_chain,
    reopen
);
async fn reopen(backend: Backend) {
    let h = Harness::open(backend).await;
    mix(&h).await;
    let r1 = h.store.find_request(NODE, "r-1").await.unwrap().unwrap();
    let r2 = h.store.find_request(NODE, "r-2").await.unwrap();
    let cert = h.store.certificate(&serial(1)).await.unwrap();
    let chain = h.chain().await;

    let h = h.reopen().await;
    assert_eq!(
        h.store.find_request(NODE, "r-1").await.unwrap(),
        Some(r1.clone())
    );
    assert_eq!(h.store.find_request(NODE, "r-2").await.unwrap(), r2);
    assert_eq!(h.store.certificate(&serial(1)).await.unwrap(), cert);
    assert_eq!(h.chain().await, chain);
    let retry = request(NODE, "r-1", Approved, Some(serial(9)));
    let retried = h.store.insert_request(retry, None, vec![event("x", "y")]);
    assert_eq!(retried.await.unwrap(), Inserted::Duplicate(Box::new(r1)));

    h.store
        .append_audit(vec![event("server.restarted", "mintgate")])
        .await
        .unwrap();
    let continued = h.chain().await;
    assert_eq!(continued[..6], chain[..]);
    assert_eq!(continued[6].event.seq, 7);
    assert_eq!(continued[6].prev_hash, chain[5].hash);
    assert_eq!(verify_chain(continued), Ok(7));
    h.finish().await;
}

both_backends!(replicas_sharing_a_database_keep_one_chain, replicas);
async fn replicas(backend: Backend) {
    const PER_REPLICA: u8 = 20;
    let h = Harness::open(backend).await;
    let replica = h.replica().await;
    let mut tasks = JoinSet::new();
    for (r, store) in [h.store.clone(), replica.clone()].into_iter().enumerate() {
        for i in 0..PER_REPLICA {
            let store = store.clone();
            let n = u8::try_from(r).unwrap() * PER_REPLICA + i + 1;
            tasks.spawn(async move {
                let own = request(NODE, &format!("r-{n}"), Approved, Some(serial(n)));
                let own = store.insert_request(own, None, vec![event("request.approved", "own")]);
                assert!(matches!(own.await.unwrap(), Inserted::New(_)));
                let shared = request(NODE, "shared", Approved, Some(serial(n)));
                let audit = vec![event("request.approved", "shared")];
                store.insert_request(shared, None, audit).await.unwrap()
            });
        }
    }
    let shared = tasks.join_all().await;
    let new = shared
        .iter()
        .filter(|r| matches!(r, Inserted::New(_)))
        .count();
    assert_eq!(new, 1, "{shared:?}");

    let events = usize::from(2 * PER_REPLICA) + 1;
    assert_eq!(h.count("requests").await, i64::try_from(events).unwrap());
    let chain = h.chain().await;
    assert_eq!(
        chain.iter().filter(|e| e.event.subject == "shared").count(),
        1
    );
    assert_eq!(verify_chain(chain), Ok(u64::try_from(events).unwrap()));
    replica.close().await;
    h.finish().await;
}
