//! Several servers on one PostgreSQL (DESIGN §15): a revocation committed on any replica
//! reaches every replica's watchers at once (NOTIFY/LISTEN, with the poll set far beyond the
//! test's patience), one replica leads and another takes over when it stops, the same request id
//! sent to two replicas issues one certificate, and a replica that crashes mid-burst loses
//! nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use mintgate_api::HubConfig;
use mintgate_domain::audit::verify_chain;
use mintgate_domain::store::CertificateStore;
use mintgate_sdk::v1;
use mintgate_sdk::v1::watch_revocations_response::Message;
use mintgate_sdk::{Client, RevocationWatcher, WatcherConfig};
use mintgate_store::SqlStore;
use mintgate_tests::csr::csr;
use mintgate_tests::db::TestDatabase;
use mintgate_tests::{Backend, Options, TestServer};
use tonic::Streaming;

use crate::holds::next as next_hold_event;
use crate::issuance::enroll_request;
use crate::revocation::{enroll, revoke_request};

/// Replicas that would poll the log once a minute: what arrives sooner came by notification.
fn replica_options() -> Options {
    Options {
        revocation: HubConfig {
            poll_interval: Duration::from_secs(60),
            heartbeat: Duration::from_millis(200),
            ..HubConfig::default()
        },
        ..Options::new(Backend::Postgres)
    }
}

async fn three_replicas() -> Option<(TestServer, TestServer, TestServer)> {
    if !mintgate_tests::db::postgres_available().await {
        return None;
    }
    let a = TestServer::spawn_with(replica_options()).await;
    let b = a.replica(replica_options()).await;
    let c = a.replica(replica_options()).await;
    Some((a, b, c))
}

async fn watch(server: &TestServer) -> Streaming<v1::WatchRevocationsResponse> {
    server
        .admin_revocation()
        .await
        .watch_revocations(v1::WatchRevocationsRequest { cursor: 0 })
        .await
        .unwrap()
        .into_inner()
}

/// The sequence numbers of the next `n` events on `stream` (heartbeats skipped), each within
/// 10 s of the one before.
async fn next_seqs(stream: &mut Streaming<v1::WatchRevocationsResponse>, n: usize) -> Vec<i64> {
    let mut seqs = Vec::with_capacity(n);
    while seqs.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s: the poll is a minute away, so NOTIFY did not arrive")
            .unwrap()
            .expect("the stream is open")
            .message;
        match message {
            Some(Message::Event(e)) => seqs.push(e.seq),
            Some(Message::Heartbeat(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_on_any_replica_reaches_every_replicas_watchers_at_once() {
    let Some((a, b, c)) = three_replicas().await else {
        return;
    };
    let replicas = [&a, &b, &c];
    let mut watchers = Vec::new();
    for server in replicas {
        watchers.push(watch(server).await);
    }
    // Six revocations, two committed on each replica in turn.
    let mut revoked = Vec::new();
    for (i, server) in replicas.iter().cycle().take(6).enumerate() {
        let id = format!("spiffe://dev.mintgate.local/workload/r{i}");
        let workload = enroll(server, &id, &format!("e{i}")).await;
        let event = server
            .admin_revocation()
            .await
            .revoke(revoke_request(
                &format!("r{i}"),
                &workload.serial,
                v1::RevocationReason::KeyCompromise,
            ))
            .await
            .unwrap()
            .into_inner();
        revoked.push(event.revocation.unwrap().seq);
    }
    // Every watcher on every replica: each entry once, in order.
    for watcher in &mut watchers {
        assert_eq!(next_seqs(watcher, 6).await, revoked);
    }
    // Each replica's live set has them: CheckStatus answers from it.
    let listener = a.http_get("/metrics").await;
    let metrics = String::from_utf8(listener.1).unwrap();
    assert!(
        metrics.contains("mintgate_revocation_listener_connected 1"),
        "{metrics}"
    );
    for server in [b, c, a] {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_leads_and_another_takes_over_when_it_stops() {
    let Some((a, b, c)) = three_replicas().await else {
        return;
    };
    let mut replicas = vec![a, b, c];
    let leader = wait_for_one_leader(&replicas).await;
    for (i, server) in replicas.iter().enumerate() {
        let (_, body) = server.http_get("/metrics").await;
        let metrics = String::from_utf8(body).unwrap();
        let expected = if i == leader { 1 } else { 0 };
        assert!(
            metrics.contains(&format!("mintgate_leader {expected}")),
            "replica {i}: {metrics}"
        );
    }
    let stopped = Instant::now();
    // Kept until the end: the first replica's database goes with it.
    let _leader = replicas.remove(leader).stop().await;
    let next = wait_for_one_leader(&replicas).await;
    eprintln!(
        "leader handover: {:?} after the leader stopped (check interval 100 ms)",
        stopped.elapsed()
    );
    // The new leader runs the jobs: a hold sweep and pruning find it leading.
    assert!(replicas[next].store().is_leader());
    for server in replicas {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_alone_checkpoints_every_replicas_events() {
    if !mintgate_tests::db::postgres_available().await {
        return;
    }
    let options = || Options {
        checkpoint_every_events: 10,
        ..replica_options()
    };
    let a = TestServer::spawn_with(options()).await;
    let b = a.replica(options()).await;
    let replicas = [a, b];
    let leader = wait_for_one_leader(&replicas).await;
    let follower = &replicas[1 - leader];
    // Events appended through the follower only.
    for i in 0..8 {
        let id = format!("spiffe://dev.mintgate.local/workload/c{i}");
        enroll(follower, &id, &format!("c{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while checkpoints(&replicas[leader]).await < 1.0 {
        assert!(Instant::now() < deadline, "the leader wrote no checkpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(checkpoints(follower).await, 0.0);
    let [a, b] = replicas;
    b.stop().await;
    a.stop().await;
}

/// Waits (up to 10 s) until exactly one of `replicas` leads; returns its index.
async fn wait_for_one_leader(replicas: &[TestServer]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaders: Vec<usize> = (0..replicas.len())
            .filter(|&i| replicas[i].store().is_leader())
            .collect();
        if let [one] = leaders[..] {
            return one;
        }
        assert!(Instant::now() < deadline, "leaders: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_request_id_sent_to_two_replicas_issues_one_certificate() {
    let Some((a, b, c)) = three_replicas().await else {
        return;
    };
    let (csr_pem, _) = csr("spiffe://dev.mintgate.local/workload/twice", &[]);
    for round in 0..5 {
        let id = format!("twice-{round}");
        let (node_a, node_b) = (a.node().await, b.node().await);
        let (from_a, from_b) = tokio::join!(
            node_a.enroll(enroll_request(&id, &csr_pem)),
            node_b.enroll(enroll_request(&id, &csr_pem))
        );
        let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
        assert_eq!(from_a.serial, from_b.serial, "round {round}");
        assert_eq!(from_a.certificate_chain_pem, from_b.certificate_chain_pem);
    }
    let rows = c.stored_rows().await;
    assert_eq!(rows.certificates.len(), 5, "{rows:?}");
    assert!(verify_chain(c.store().audit_chain().await.unwrap()).is_ok());
    for server in [b, c, a] {
        server.stop().await;
    }
}

/// A `mintgate serve --dev` process on the shared database: the replicas of the kill test run
/// as processes of their own, so that one can be killed outright.
struct Process {
    child: std::process::Child,
    url: String,
}

impl Process {
    /// Starts a replica in `dir` (the first one there writes the dev PKI; start the others once
    /// it listens) and waits until it listens.
    fn start(dir: &std::path::Path, database_url: &str) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(mintgate_tests::mintgate_bin())
            .args(["serve", "--dev", "--database-url", database_url])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            // Read to the end, so the server never writes into a closed pipe.
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.trim().strip_suffix(" list")
                    && !sent
                {
                    sent = tx
                        .send(addr.rsplit(' ').next().unwrap_or("").to_owned())
                        .is_ok();
                }
            }
        });
        let grpc = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the replica names its gRPC address within 60 s");
        Self {
            child,
            url: format!("https://{grpc}"),
        }
    }

    async fn client(&self, dir: &std::path::Path, who: &str) -> Client {
        let read =
            |name: String| std::fs::read_to_string(dir.join("certs-dev").join(name)).unwrap();
        let tls = mintgate_sdk::TlsMaterial {
            ca_pem: read("ca.pem".into()),
            cert_pem: read(format!("{who}.pem")),
            key_pem: read(format!("{who}.key")),
        };
        Client::connect(&self.url, "localhost", &tls).await.unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_burst_loses_nothing_and_issues_nothing_twice() {
    if !mintgate_tests::db::postgres_available().await {
        return;
    }
    let db = TestDatabase::create(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Process::start(dir.path(), &db.url);
    let b = Process::start(dir.path(), &db.url);
    let c = Process::start(dir.path(), &db.url);
    let (alice_b, alice_c) = (
        b.client(dir.path(), "alice").await,
        c.client(dir.path(), "alice").await,
    );
    let mut watch_b = alice_b.watch_revocations(0).await.unwrap();
    let mut watch_c = alice_c.watch_revocations(0).await.unwrap();
    // Certificates to revoke, issued before the burst.
    let node_b = b.client(dir.path(), "node").await;
    let mut targets = Vec::new();
    for i in 0..12 {
        let (csr_pem, _) = csr(&format!("spiffe://dev.mintgate.local/workload/t{i}"), &[]);
        let issued = node_b
            .enroll(enroll_request(&format!("t{i}"), &csr_pem))
            .await;
        targets.push(issued.unwrap().serial);
    }

    // A burst of revocations and enrollments through replica a, killed (SIGKILL) once the
    // first revocation has answered.
    let (alice_a, node_a) = (
        a.client(dir.path(), "alice").await,
        a.client(dir.path(), "node").await,
    );
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let first_tx = std::sync::Mutex::new(Some(first_tx));
    let revokes = targets.iter().enumerate().map(|(i, serial)| {
        let (alice, first_tx) = (alice_a.clone(), &first_tx);
        let request = revoke_request(
            &format!("burst-r{i}"),
            serial,
            v1::RevocationReason::Superseded,
        );
        async move {
            let answer = alice.revoke(request).await?;
            if let Some(tx) = first_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            Ok::<_, mintgate_sdk::Error>(answer.seq)
        }
    });
    let enrolls = (0..12).map(|i| {
        let node = node_a.clone();
        let (csr_pem, _) = csr(&format!("spiffe://dev.mintgate.local/workload/b{i}"), &[]);
        async move {
            node.enroll(enroll_request(&format!("burst-e{i}"), &csr_pem))
                .await
        }
    });
    let (revoked, enrolled, ()) = tokio::join!(join_all(revokes), join_all(enrolls), async {
        let _ = first_rx.await;
        a.child.kill().unwrap();
    });
    let answered: BTreeSet<i64> = revoked.into_iter().filter_map(Result::ok).collect();
    assert!(!answered.is_empty());

    // Every Revoke that answered OK reaches both survivors once, in order, and nothing else
    // does (a revocation whose answer was lost may have committed too: it arrives all the same).
    let store = SqlStore::connect(&db.url).await.unwrap();
    let committed = store.revocation_bounds().await.unwrap().head;
    for watcher in [&mut watch_b, &mut watch_c] {
        let seqs = next_seqs(watcher, usize::try_from(committed).unwrap()).await;
        assert_eq!(seqs, (1..=committed).collect::<Vec<_>>());
        assert!(answered.iter().all(|s| seqs.contains(s)));
    }
    // No request issued twice: one certificate per issued enrollment, the chain intact.
    let issued = count(
        &db.url,
        "SELECT COUNT(*) FROM requests WHERE kind = 'ENROLL' AND state = 'ISSUED'",
    )
    .await;
    assert_eq!(
        count(&db.url, "SELECT COUNT(*) FROM certificates").await,
        issued
    );
    let ok = enrolled.iter().filter(|r| r.is_ok()).count() as i64;
    assert!(issued >= 12 + ok, "issued {issued}, answered {ok}");
    assert!(verify_chain(store.audit_chain().await.unwrap()).is_ok());
    store.close().await;
    drop((b, c));
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sdk_fails_over_to_another_replica_and_resumes_the_feed_from_its_cursor() {
    if !mintgate_tests::db::postgres_available().await {
        return;
    }
    let a = TestServer::spawn_with(replica_options()).await;
    let b = a.replica(replica_options()).await;
    // One client and one watcher over both replicas, a first.
    let urls = format!("{},{}", a.url(), b.url());
    let alice = a.material(&a.pki.alice.cert_pem, &a.pki.alice.key_pem);
    let connect_urls = urls.clone();
    let watcher = RevocationWatcher::spawn(
        Arc::new(move || {
            let (urls, material) = (connect_urls.clone(), alice.clone());
            Box::pin(async move { Client::connect(&urls, "localhost", &material).await })
        }),
        WatcherConfig {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..WatcherConfig::default()
        },
    )
    .unwrap();
    let node_tls = a.material(&a.pki.node.cert_pem, &a.pki.node.key_pem);
    let node = Client::connect(&urls, "localhost", &node_tls)
        .await
        .unwrap();

    let first = enroll(&a, "spiffe://dev.mintgate.local/workload/f1", "f1").await;
    let second = enroll(&a, "spiffe://dev.mintgate.local/workload/f2", "f2").await;
    revoke(&a, "fr1", &first.serial).await;
    let set = watcher.set();
    tokio::time::timeout(Duration::from_secs(10), set.applied_through(1))
        .await
        .expect("the first revocation through replica a");

    // Replica a goes; the watcher reconnects to b with its cursor, and the client's next call
    // goes there too.
    let _a = a.stop().await;
    revoke(&b, "fr2", &second.serial).await;
    tokio::time::timeout(Duration::from_secs(10), set.applied_through(2))
        .await
        .expect("the second revocation through replica b");
    assert_eq!(set.cursor(), 2);
    assert!(set.is_revoked(&first.serial) && set.is_revoked(&second.serial));
    let (csr_pem, _) = csr("spiffe://dev.mintgate.local/workload/f3", &[]);
    let mut issued = node.enroll(enroll_request("f3", &csr_pem)).await;
    if issued.is_err() {
        // The call in flight when the connection broke; the same request id again.
        issued = node.enroll(enroll_request("f3", &csr_pem)).await;
    }
    assert!(!issued.unwrap().serial.is_empty());
    drop(watcher);
    b.stop().await;
}

async fn revoke(server: &TestServer, request_id: &str, serial: &str) -> v1::RevokeResponse {
    let request = revoke_request(request_id, serial, v1::RevocationReason::KeyCompromise);
    let mut admin = server.admin_revocation().await;
    admin.revoke(request).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_sent_while_a_listener_reconnects_is_read_from_the_log() {
    if !mintgate_tests::db::postgres_available().await {
        return;
    }
    let a = TestServer::spawn_with(replica_options()).await;
    let b = a.replica(replica_options()).await;
    let mut on_b = watch(&b).await;
    let workload = enroll(&a, "spiffe://dev.mintgate.local/workload/l1", "l1").await;

    // Every listener's session ends (as a network cut or a PostgreSQL restart would end it);
    // the revocation is committed before they are back, so its NOTIFY reaches nobody.
    let admin = sea_orm::Database::connect(&a.database_url).await.unwrap();
    let terminated = sea_orm::ConnectionTrait::execute_unprepared(
        &admin,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .await
    .unwrap();
    assert!(terminated.rows_affected() >= 2, "a listener per replica");
    let seq = revoke(&a, "l1", &workload.serial)
        .await
        .revocation
        .unwrap()
        .seq;
    // The poll is a minute away: b's listener reconnects and reads the log.
    assert_eq!(next_seqs(&mut on_b, 1).await, vec![seq]);
    admin.close().await.unwrap();
    b.stop().await;
    a.stop().await;
}

/// The single count `sql` selects, read past the servers.
async fn count(url: &str, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait as _;
    let db = sea_orm::Database::connect(url).await.unwrap();
    let statement = sea_orm::Statement::from_string(db.get_database_backend(), sql.to_owned());
    let row = db.query_one_raw(statement).await.unwrap().unwrap();
    let n = row.try_get_by_index(0).unwrap();
    db.close().await.unwrap();
    n
}

/// `mintgate_audit_checkpoints_total` on `server`'s /metrics.
async fn checkpoints(server: &TestServer) -> f64 {
    let text = String::from_utf8(server.http_get("/metrics").await.1).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("mintgate_audit_checkpoints_total "))
        .map_or(0.0, |n| n.parse::<f64>().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_pending_on_one_replica_follows_holds_changed_on_another() {
    if !mintgate_tests::db::postgres_available().await {
        return;
    }
    // Five requests from one node in a minute spike: the dev policy holds high risk for two.
    let bursty = || Options {
        risk: mintgate_domain::risk::RiskConfig {
            spike_min_per_minute: 5,
            ..mintgate_domain::risk::RiskConfig::default()
        },
        ..replica_options()
    };
    let a = TestServer::spawn_with(bursty()).await;
    let b = a.replica(bursty()).await;
    let mut on_b = b
        .admin_as("bob")
        .await
        .watch_pending(v1::WatchPendingRequest {})
        .await
        .unwrap()
        .into_inner();
    let node = a.node().await;
    let (csr_pem, _) = csr("spiffe://dev.mintgate.local/workload/burst", &[]);
    let mut held = None;
    for i in 1..=5 {
        let answer = node
            .enroll(enroll_request(&format!("h{i}"), &csr_pem))
            .await;
        held = answer.unwrap().hold;
    }
    let hold_id = held.expect("the fifth is held").hold_id;
    let (kind, hold) = next_hold_event(&mut on_b).await;
    assert_eq!(
        (kind, hold.hold_id.as_str()),
        (v1::HoldEventKind::Held, hold_id.as_str())
    );

    // bob approves on replica a: b's stream sees the vote, with the hold as it now is.
    let approve = v1::ApproveRequest {
        hold_id: hold_id.clone(),
        reason: "expected rollout".to_owned(),
    };
    a.admin_as("bob").await.approve(approve).await.unwrap();
    let (kind, hold) = next_hold_event(&mut on_b).await;
    assert_eq!((kind, hold.approvals), (v1::HoldEventKind::Approved, 1));
    // A server shuts down with WatchPending streams open: they end.
    b.stop().await;
    assert!(on_b.message().await.is_ok_and(|m| m.is_none()));
    a.stop().await;
}
