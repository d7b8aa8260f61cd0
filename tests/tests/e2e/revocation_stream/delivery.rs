//! Every committed revocation reaches every watcher exactly once and in order: across a restart,
//! under concurrent writers, while another writer's transaction is still open, and after a
//! revocation that failed halfway.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mintgate_api::HubConfig;
use mintgate_domain::audit::verify_chain;
use mintgate_domain::store::{CertificateStore, LogBounds};
use mintgate_sdk::v1;
use mintgate_sdk::v1::watch_revocations_response::Message;
use mintgate_tests::db::hold_write_lock;
use mintgate_tests::{Backend, TestServer, both_backends};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction};
use tonic::Code;
use tonic_types::StatusExt;

use super::{
    WAIT, enroll, heartbeat_every, hub, next_event, only_heartbeats, quiet, report, revoke, seqs,
    status, through, watch,
};

both_backends!(
    a_watcher_resumes_after_a_restart_with_nothing_lost_or_repeated,
    restart_mid_stream
);
async fn restart_mid_stream(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let certs = enroll(&server, "r", 5, None).await;
    let admin = server.admin_revocation().await;
    // One watcher stays connected through the restart; the other applies two events and goes
    // away, as a crashed client would.
    let mut steady = watch(&admin, 0).await.unwrap();
    let mut crashed = watch(&admin, 0).await.unwrap();
    let mut committed = Vec::new();
    for (i, cert) in certs[..3].iter().enumerate() {
        committed.push(
            revoke(&admin, &format!("before-{i}"), &cert.serial)
                .await
                .unwrap(),
        );
    }
    let crashed_seen = vec![
        next_event(&mut crashed).await,
        next_event(&mut crashed).await,
    ];
    drop(crashed);

    let server = server.restart().await;
    // Shutting down ends the open stream after what was already sent (with status OK today),
    // so the client knows to reconnect instead of waiting forever.
    let mut steady_seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(WAIT, steady.message())
        .await
        .expect("the stream ends")
    {
        match m.message.unwrap() {
            Message::Event(e) => steady_seen.push(e),
            Message::Heartbeat(_) => {}
            Message::Snapshot(s) => panic!("unexpected snapshot {s:?}"),
        }
    }
    let admin = server.admin_revocation().await;
    for (i, cert) in certs[3..].iter().enumerate() {
        committed.push(
            revoke(&admin, &format!("after-{i}"), &cert.serial)
                .await
                .unwrap(),
        );
    }
    assert_eq!(seqs(&committed), [1, 2, 3, 4, 5]);
    for mut seen in [crashed_seen, steady_seen] {
        let cursor = seen.last().map_or(0, |e| e.seq);
        let mut resumed = watch(&admin, cursor).await.unwrap();
        seen.extend(through(&mut resumed, cursor, 5).await);
        assert_eq!(seen, committed, "resumed from cursor {cursor}");
    }
    // The restarted server still refuses all five.
    let serials: Vec<&str> = certs.iter().map(|c| c.serial.as_str()).collect();
    let (statuses, head) = status(&admin, &serials).await;
    assert_eq!(head, 5);
    assert!(
        statuses
            .iter()
            .all(|s| *s == v1::CertificateStatus::Revoked)
    );
    server.shutdown().await;
}

both_backends!(
    concurrent_revocations_reach_every_watcher_once_and_in_order,
    concurrent_revocations
);
async fn concurrent_revocations(backend: Backend) {
    const N: usize = 160;
    const REVOKERS: usize = 4;
    let config = HubConfig {
        max_streams_per_identity: 8,
        ..heartbeat_every(50)
    };
    let server = TestServer::spawn_with(hub(config, backend)).await;
    let certs = enroll(&server, "c", N, None).await;
    let mut early = Vec::new();
    for _ in 0..3 {
        early.push(watch(&server.admin_revocation().await, 0).await.unwrap());
    }
    let mut first = early.pop().unwrap();
    let mut watchers: Vec<_> = early
        .into_iter()
        .map(|mut w| tokio::spawn(async move { through(&mut w, 0, N as i64).await }))
        .collect();

    // Several operator connections revoke at once; each notes when it asked.
    let asked: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut revokers = Vec::new();
    for r in 0..REVOKERS {
        let client = server.admin_revocation().await;
        let serials: Vec<String> = certs
            .iter()
            .skip(r)
            .step_by(REVOKERS)
            .map(|c| c.serial.clone())
            .collect();
        let asked = asked.clone();
        revokers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for serial in serials {
                let start = Instant::now();
                asked.lock().unwrap().insert(serial.clone(), start);
                let answer = revoke(&client, &format!("c-{serial}"), &serial)
                    .await
                    .unwrap();
                answers.push((answer, start.elapsed()));
            }
            answers
        }));
    }

    // One more watcher joins from the beginning when half are through: its replay from the
    // database hands over to the live feed while revocations keep committing.
    let (progress, mut halfway) = tokio::sync::watch::channel(0);
    let late_client = server.admin_revocation().await;
    watchers.push(tokio::spawn(async move {
        let _ = halfway.wait_for(|n| *n >= N / 2).await;
        let mut late = watch(&late_client, 0).await.unwrap();
        through(&mut late, 0, N as i64).await
    }));
    let mut seen = Vec::new();
    let mut delivery = Vec::new();
    while seen.len() < N {
        let event = next_event(&mut first).await;
        delivery.push(asked.lock().unwrap()[&event.serial].elapsed());
        seen.push(event);
        progress.send_replace(seen.len());
    }

    let mut answers = HashMap::new();
    let mut calls = Vec::new();
    for r in revokers {
        for (answer, took) in r.await.unwrap() {
            calls.push(took);
            answers.insert(answer.serial.clone(), answer);
        }
    }
    let revoked: BTreeSet<_> = certs.iter().map(|c| c.serial.clone()).collect();
    assert_eq!(answers.keys().cloned().collect::<BTreeSet<_>>(), revoked);
    let want: Vec<i64> = (1..=N as i64).collect();
    let mut all = vec![seen];
    for w in watchers {
        all.push(w.await.unwrap());
    }
    for events in all {
        assert_eq!(seqs(&events), want, "gap, duplicate or reordering");
        for e in &events {
            assert_eq!(e, &answers[&e.serial]);
        }
    }
    report("concurrent: Revoke call", calls);
    report("concurrent: Revoke asked -> event at watcher", delivery);
    server.shutdown().await;
}

/// Another writer sharing the database (a second replica): holds the store's writer lock in an
/// open transaction, as the store itself takes it.
async fn other_writer(server: &TestServer) -> (DatabaseConnection, DatabaseTransaction) {
    let db = Database::connect(&server.database_url).await.unwrap();
    let txn = hold_write_lock(&db).await;
    (db, txn)
}

// DESIGN §7: with `seq > cursor` reads, an entry whose transaction commits late is skipped by a
// watcher that already read a later one. The store numbers an entry head + 1 under the writer
// lock, which it holds until commit, so two of this server's own revocations are never numbered
// and uncommitted side by side: that interleaving cannot be set up at all. What can be is another
// writer on the same database (a second replica) holding number 1 in an open transaction while
// this server revokes two more. Nothing after 1 may become visible, or be answered, before 1
// commits; then the watcher gets 1, 2, 3, once each.
both_backends!(
    a_revocation_that_has_not_committed_yet_is_never_skipped,
    uncommitted_writer
);
async fn uncommitted_writer(backend: Backend) {
    let server = TestServer::spawn_with(hub(heartbeat_every(50), backend)).await;
    let certs = enroll(&server, "h", 3, None).await;
    let serials: Vec<&str> = certs.iter().map(|c| c.serial.as_str()).collect();
    let admin = server.admin_revocation().await;
    let mut watcher = watch(&admin, 0).await.unwrap();
    assert!(through(&mut watcher, 0, 0).await.is_empty());

    // The other writer revokes the first certificate: it takes sequence number 1 the way the
    // store does (head + 1 under the writer lock) and does not commit yet.
    let (_db, txn) = other_writer(&server).await;
    txn.execute_unprepared(&format!(
        "UPDATE certificates SET state = 'REVOKED' WHERE serial = '{0}';
         INSERT INTO revocations (seq, serial, spiffe_id, reason, revoked_at, not_after,
                                  issuer_key_id, revoked_by, request_pk)
         SELECT 1, serial, spiffe_id, 'KEY_COMPROMISE', not_before, not_after, 'other', 'other',
                request_pk
         FROM certificates WHERE serial = '{0}'",
        serials[0]
    ))
    .await
    .unwrap();
    // Two revocations through the server start meanwhile, on two connections.
    let mut pending_tasks = Vec::new();
    for i in [1, 2] {
        let client = server.admin_revocation().await;
        let serial = serials[i].to_owned();
        pending_tasks.push(tokio::spawn(async move {
            revoke(&client, &format!("h-{i}"), &serial).await
        }));
    }

    // While that transaction is open nothing is visible: the watcher hears heartbeats at head 0
    // only, neither Revoke is answered, and CheckStatus sees three good certificates.
    let beats = only_heartbeats(&mut watcher, Duration::from_millis(700)).await;
    assert!(
        !beats.is_empty(),
        "the stream stays alive while the writer is blocked"
    );
    assert!(beats.iter().all(|h| h.head_seq == 0), "{beats:?}");
    assert!(pending_tasks.iter().all(|t| !t.is_finished()));
    let good = vec![v1::CertificateStatus::Good; 3];
    assert_eq!(status(&admin, &serials).await, (good, 0));

    // Within SQLite's busy timeout (10 s) the other writer commits: the watcher gets its entry
    // first, then the server's two, each once.
    txn.commit().await.unwrap();
    let mut answered = Vec::new();
    for t in pending_tasks {
        answered.push(t.await.unwrap().unwrap());
    }
    answered.sort_by_key(|e| e.seq);
    assert_eq!(seqs(&answered), [2, 3]);
    let seen = through(&mut watcher, 0, 3).await;
    assert_eq!(seqs(&seen), [1, 2, 3]);
    assert_eq!(seen[0].serial, serials[0]);
    assert_eq!(seen[1..], answered[..]);
    quiet(&mut watcher, 3).await;
    server.shutdown().await;
}

/// Makes the audit append of a revocation (its last step, after the certificate update and the
/// log insert) fail inside the database.
async fn break_revocation_audit(server: &TestServer, broken: bool) {
    let sql = match (server.backend, broken) {
        (Backend::Sqlite, true) => {
            "CREATE TRIGGER inject_failure BEFORE INSERT ON audit_events
             WHEN NEW.action = 'certificate.revoked'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        }
        (Backend::Sqlite, false) => "DROP TRIGGER inject_failure",
        (Backend::Postgres, true) => {
            "CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.action = 'certificate.revoked' THEN RAISE EXCEPTION 'injected failure'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER inject_failure BEFORE INSERT ON audit_events
             FOR EACH ROW EXECUTE FUNCTION inject_failure()"
        }
        (Backend::Postgres, false) => {
            "DROP TRIGGER inject_failure ON audit_events; DROP FUNCTION inject_failure()"
        }
    };
    server.store().execute_raw(sql).await.unwrap();
}

both_backends!(
    a_revocation_that_fails_midway_leaves_nothing_and_can_be_retried,
    failure_midway
);
async fn failure_midway(backend: Backend) {
    let server = TestServer::spawn_with(hub(heartbeat_every(50), backend)).await;
    let peer = enroll(&server, "f", 1, None).await.remove(0);
    let admin = server.admin_revocation().await;
    let mut watcher = watch(&admin, 0).await.unwrap();
    assert!(through(&mut watcher, 0, 0).await.is_empty());
    let chain = server.store().audit_chain().await.unwrap();

    break_revocation_audit(&server, true).await;
    let err = revoke(&admin, "f-1", &peer.serial).await.unwrap_err();
    let info = err.get_details_error_info().unwrap();
    assert_eq!(
        (err.code(), info.reason.as_str()),
        (Code::Unavailable, "UNAVAILABLE")
    );
    assert_eq!(info.metadata["fault"], "system");

    // Nothing of it stayed: the certificate is good, no log entry, the same verifying audit
    // chain, no request under that id, and the peer still connects.
    assert_eq!(
        status(&admin, &[&peer.serial]).await,
        (vec![v1::CertificateStatus::Good], 0)
    );
    assert_eq!(
        server.store().revocation_bounds().await.unwrap(),
        LogBounds::default()
    );
    assert_eq!(server.store().audit_chain().await.unwrap(), chain);
    assert!(verify_chain(chain.clone()).is_ok());
    let requests = server.stored_rows().await.requests;
    assert!(
        requests.iter().all(|(_, id, _)| id != "f-1"),
        "{requests:?}"
    );
    let peer_client = server.revocation_as(&peer.chain_pem, &peer.key_pem).await;
    assert_eq!(status(&peer_client, &[]).await, (vec![], 0));
    quiet(&mut watcher, 0).await;

    // Once the database works again the same request succeeds, with sequence number 1.
    break_revocation_audit(&server, false).await;
    let event = revoke(&admin, "f-1", &peer.serial).await.unwrap();
    assert_eq!(event.seq, 1);
    assert_eq!(
        through(&mut watcher, 0, 1).await,
        std::slice::from_ref(&event)
    );
    quiet(&mut watcher, 1).await;
    let after = server.store().audit_chain().await.unwrap();
    assert_eq!(after[..chain.len()], chain[..]);
    assert_eq!(after.len(), chain.len() + 1);
    assert_eq!(after[chain.len()].event.action, "certificate.revoked");
    assert_eq!(verify_chain(after.clone()), Ok(after.len() as u64));
    server.shutdown().await;
}
