//! Queue and replay: revocations asked for while the control plane is down wait on local disk,
//! survive a restart of both sides, and are applied in order, exactly once, when it is back,
//! even when a crash makes the queue send one again.

use std::sync::Arc;
use std::time::Duration;

use mintgate_sdk::v1::watch_revocations_response::Message;
use mintgate_sdk::{
    Backoff, Client, Connect, DurableQueue, ErrorKind, OpAnswer, QueuedOp, ReplayOutcome, v1,
};
use mintgate_tests::{Backend, TestServer, both_backends};

use crate::revocation::enroll;

const WEB: &str = "spiffe://dev.mintgate.local/workload/web";
const DB: &str = "spiffe://dev.mintgate.local/workload/db";

both_backends!(
    a_revocation_queued_while_the_server_is_down_is_applied_once,
    queue_and_replay
);
async fn queue_and_replay(backend: Backend) {
    use v1::RevocationReason::{CessationOfOperation, KeyCompromise};
    let server = TestServer::spawn(backend).await;
    let web = enroll(&server, WEB, "web").await;
    let db = enroll(&server, DB, "db").await;
    let admin = server.admin().await;
    let stopped = server.stop().await;

    // While it is down: revoke web, a serial the server never issued, then db.
    let dir = tempfile::tempdir().unwrap();
    let queue = DurableQueue::open(dir.path()).unwrap();
    let revoke_web = QueuedOp::revoke(&web.serial, KeyCompromise);
    let ops = [
        revoke_web.clone(),
        QueuedOp::revoke("0badc0de", CessationOfOperation),
        QueuedOp::revoke(&db.serial, KeyCompromise),
    ];
    let ids: Vec<u64> = ops
        .iter()
        .map(|op| queue.enqueue(op.clone()).unwrap())
        .collect();
    let report = queue.replay(&admin).await.unwrap();
    assert!(report.finished.is_empty());
    let stop = report.stopped.unwrap();
    assert_eq!(stop.id, ids[0]);
    assert!(stop.retryable && stop.error.is_retryable(), "{stop:?}");
    assert_eq!(queue.len(), 3);

    // Both sides restart: the queue from its directory, the server on its database.
    drop(queue);
    let queue = DurableQueue::open(dir.path()).unwrap();
    let server = stopped.start().await;
    let admin = server.admin().await;
    let report = queue.replay(&admin).await.unwrap();
    assert!(report.is_drained(), "{report:?}");
    let replayed: Vec<_> = report.finished.iter().map(|f| (f.id, &f.op)).collect();
    assert_eq!(
        replayed,
        ids.iter()
            .zip(&ops)
            .map(|(i, o)| (*i, o))
            .collect::<Vec<_>>()
    );
    // In queue order: web is the log's first entry, the unknown serial is settled, db second.
    let revoked = applied(&report.finished[0].outcome);
    assert_eq!((revoked.seq, &revoked.serial), (1, &web.serial));
    assert_eq!(revoked.reason(), KeyCompromise);
    assert_eq!(settled_reason(&report.finished[1].outcome), "NOT_FOUND");
    let second = applied(&report.finished[2].outcome);
    assert_eq!((second.seq, &second.serial), (2, &db.serial));
    assert!(queue.is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // A crash after the server applied the revocation but before its file was removed: the op
    // comes back with its request id, and the server answers with the same entry. A new
    // request to revoke web is settled as already done; one it can never apply is moved aside.
    drop(queue);
    let queue = DurableQueue::open(dir.path()).unwrap();
    queue.enqueue(revoke_web).unwrap();
    queue
        .enqueue(QueuedOp::revoke(&web.serial, KeyCompromise))
        .unwrap();
    let bad = queue
        .enqueue(QueuedOp::revoke("not-hex", KeyCompromise))
        .unwrap();
    let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
    let report = queue
        .run_until_drained(&connect_as_admin(&server), backoff)
        .await
        .unwrap();
    assert!(report.is_drained(), "{report:?}");
    assert_eq!(applied(&report.finished[0].outcome), revoked);
    assert_eq!(
        settled_reason(&report.finished[1].outcome),
        "ALREADY_REVOKED"
    );
    match &report.finished[2].outcome {
        ReplayOutcome::Rejected(e) => assert_eq!(e.kind(), ErrorKind::InvalidRequest, "{e:?}"),
        other => panic!("expected a rejected op, got {other:?}"),
    }
    assert!(
        dir.path()
            .join(format!("rejected/{bad:020}.json"))
            .is_file()
    );
    drop(queue);
    let queue = DurableQueue::open(dir.path()).unwrap();
    assert!(queue.is_empty());
    assert_eq!(
        queue
            .enqueue(QueuedOp::revoke("0a", KeyCompromise))
            .unwrap(),
        bad + 1
    );

    // One log entry per certificate, no more: the head is 2, web is revoked at seq 1, and the
    // feed from the start carries exactly the two.
    let status = admin.check_status(vec![web.serial.clone()]).await.unwrap();
    assert_eq!(status.head_seq, 2);
    assert_eq!(status.statuses[0].status(), v1::CertificateStatus::Revoked);
    assert_eq!(status.statuses[0].revocation.as_ref(), Some(&revoked));
    assert_eq!(logged_serials(&admin).await, [web.serial, db.serial]);
    server.shutdown().await;
}

fn applied(outcome: &ReplayOutcome) -> v1::RevocationEvent {
    match outcome {
        ReplayOutcome::Applied(OpAnswer::Revoked(event)) => event.clone(),
        other => panic!("expected a revocation, got {other:?}"),
    }
}

fn settled_reason(outcome: &ReplayOutcome) -> &str {
    match outcome {
        ReplayOutcome::Settled(error) => &error.reason,
        other => panic!("expected a settled op, got {other:?}"),
    }
}

fn connect_as_admin(server: &TestServer) -> Connect {
    let url = server.url();
    let material = server.material(&server.pki.admin.cert_pem, &server.pki.admin.key_pem);
    Arc::new(move || {
        let (url, material) = (url.clone(), material.clone());
        Box::pin(async move { Client::connect(&url, "localhost", &material).await })
    })
}

/// The serial of every entry in the revocation log: the feed from cursor 0 up to the
/// heartbeat that follows its replay.
async fn logged_serials(client: &Client) -> Vec<String> {
    let mut feed = client.watch_revocations(0).await.unwrap();
    let mut serials = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), feed.message())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .and_then(|m| m.message);
        match message {
            Some(Message::Event(e)) => serials.push(e.serial),
            Some(Message::Heartbeat(_)) => return serials,
            other => panic!("unexpected {other:?}"),
        }
    }
}
