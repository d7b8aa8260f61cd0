//! Faults an operator's chaos test injects: a full disk and a database that stops answering.
//! The server never answers OK for what it did not store, says so on `/readyz` at once, and
//! recovers by itself.

use std::time::Duration;

use mintgate_domain::audit::verify_chain;
use mintgate_domain::store::CertificateStore;
use mintgate_sdk::v1;
use mintgate_store::ProbeSettings;
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::db::{TestDatabase, hold_write_lock};
use mintgate_tests::disk::SmallDisk;
use mintgate_tests::proxy::Proxy;
use mintgate_tests::{Backend, Options, TestServer, both_backends};
use sea_orm::Database;
use tonic::Code;
use tonic_types::StatusExt;

use crate::issuance::{WORKLOAD, enroll_request};

/// A probe quick enough that a test sees the health change promptly, with a timeout that a
/// loaded CI machine does not trip by accident.
const PROBE: ProbeSettings = ProbeSettings {
    interval: Duration::from_millis(100),
    timeout: Duration::from_secs(2),
};

both_backends!(
    a_full_disk_fails_enroll_as_unavailable_and_readyz_until_space_returns,
    disk_full
);
async fn disk_full(backend: Backend) {
    let Some(disk) = SmallDisk::mount(24 * 1024 * 1024) else {
        return;
    };
    let server = TestServer::spawn_with(Options {
        database: Some(TestDatabase::create_in(backend, &disk.path().join("db")).await),
        store_probe: PROBE,
        ..Options::new(backend)
    })
    .await;
    let now = server.clock.now_odt().unix_timestamp();
    let mut node = server.node_provisioning().await;
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    node.enroll(enroll_request("before", &csr_pem))
        .await
        .unwrap();
    // Ready before the fault (a loaded machine may take a probe or two to say so).
    wait_for_readyz(&server, 200).await;

    disk.fill();
    // PostgreSQL may still fit a few rows in pages it has; the first refusal is what counts.
    let mut refused = None;
    for i in 0..200 {
        let id = format!("full-{i}");
        match node.enroll(enroll_request(&id, &csr_pem)).await {
            Ok(_) => continue,
            Err(status) => {
                refused = Some((id, status));
                break;
            }
        }
    }
    let (id, status) = refused.expect("every Enroll answered OK on a full disk");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.domain, "mintgate");
    assert_eq!(
        info.metadata.get("fault").map(String::as_str),
        Some("system")
    );
    // Concurrent calls during the fault share failing batches: each refusal is a system fault
    // the client may retry, never one blamed on the caller.
    let calls = (0..20).map(|i| {
        let mut node = node.clone();
        let request = enroll_request(&format!("burst-{i}"), &csr_pem);
        async move { node.enroll(request).await }
    });
    for answer in futures_util::future::join_all(calls).await {
        if let Err(status) = answer {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(
                info.metadata.get("fault").map(String::as_str),
                Some("system")
            );
        }
    }
    let (code, body) = readyz(&server).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("commit") || body.contains("in time"),
        "{body}"
    );
    assert!(
        store_ready_gauge(&server)
            .await
            .contains("mintgate_store_ready 0")
    );

    // Space returns: readiness comes back without any client write, and the same request id
    // now gets its certificate.
    disk.free();
    wait_for_readyz(&server, 200).await;
    assert!(
        store_ready_gauge(&server)
            .await
            .contains("mintgate_store_ready 1")
    );
    let issued = node
        .enroll(enroll_request(&id, &csr_pem))
        .await
        .unwrap()
        .into_inner();
    check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        now,
    );
    let status = node
        .get_request(v1::GetRequestRequest { request_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state(), v1::RequestState::Issued);
    let chain = server.store().audit_chain().await.unwrap();
    assert!(verify_chain(chain).is_ok());
    drop(disk);
    server.shutdown().await;
}

both_backends!(
    readyz_answers_at_once_and_says_503_while_the_database_hangs,
    hung_database
);
async fn hung_database(backend: Backend) {
    let server = TestServer::spawn_with(Options {
        store_probe: PROBE,
        ..Options::new(backend)
    })
    .await;
    wait_for_readyz(&server, 200).await;

    // Another client takes the database's write lock and keeps it: the store's writes hang.
    let outsider = Database::connect(&server.database_url).await.unwrap();
    let lock = hold_write_lock(&outsider).await;
    let (code, body) = wait_for_readyz(&server, 503).await;
    assert!(body.contains("in time"), "{code} {body}");

    lock.rollback().await.unwrap();
    wait_for_readyz(&server, 200).await;
    let _ = outsider.close().await;
    server.shutdown().await;
}

/// A PostgreSQL outage that makes every query hang (a network partition): `/readyz` keeps
/// answering at once and says 503 within the probe's interval and timeout, and readiness
/// returns, and issuance works again, when the network does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_503_at_once_during_a_postgresql_outage() {
    if !mintgate_tests::db::postgres_available().await {
        return;
    }
    let db = TestDatabase::create(Backend::Postgres).await;
    let proxy = Proxy::start(db.server_addr()).await;
    let server = TestServer::spawn_with(Options {
        database: Some(db.through(proxy.addr())),
        store_probe: PROBE,
        ..Options::new(Backend::Postgres)
    })
    .await;
    wait_for_readyz(&server, 200).await;

    proxy.partition();
    let (_, body) = wait_for_readyz(&server, 503).await;
    assert!(body.contains("in time"), "{body}");
    // Still 503, still at once, while the outage lasts.
    assert_eq!(readyz(&server).await.0, 503);

    proxy.heal();
    wait_for_readyz(&server, 200).await;
    let mut node = server.node_provisioning().await;
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    node.enroll(enroll_request("after-outage", &csr_pem))
        .await
        .unwrap();
    server.shutdown().await;
}

async fn store_ready_gauge(server: &TestServer) -> String {
    let (_, body) = server.http_get("/metrics").await;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("mintgate_store_ready"))
        .collect()
}

/// GET /readyz, which must answer within a second whatever the database does.
async fn readyz(server: &TestServer) -> (u16, String) {
    let (code, body) = tokio::time::timeout(Duration::from_secs(1), server.http_get("/readyz"))
        .await
        .expect("/readyz took more than a second to answer");
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Asks `/readyz` until it answers `code` (bounded: the probe's interval and timeout are
/// fractions of a second).
async fn wait_for_readyz(server: &TestServer, code: u16) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = readyz(server).await;
        if answer.0 == code {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still answers {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
