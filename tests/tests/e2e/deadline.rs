//! Call deadlines. The server's own (`[grpc] call_timeout_ms`): a call it cannot answer in time —
//! here an Enroll whose write waits behind another replica's writer lock — ends as
//! DEADLINE_EXCEEDED with ErrorInfo reason SERVER_TIMEOUT, fault=system, and is counted as a
//! system fault. The client's (`grpc-timeout`), when sooner: the same code with reason
//! CLIENT_TIMEOUT, fault=user, counted as a user fault.

use std::time::Duration;

use mintgate_api::GrpcConfig;
use mintgate_tests::csr::csr;
use mintgate_tests::db::hold_write_lock;
use mintgate_tests::raw::RawGrpc;
use mintgate_tests::{Backend, Options, TestServer, both_backends};
use prost::Message as _;
use sea_orm::{Database, DatabaseConnection, DatabaseTransaction};
use tonic::Code;
use tonic_types::StatusExt;

use crate::issuance::{WORKLOAD, enroll_request};
use crate::metrics::{OUTCOMES, Scrape};

/// Takes the database's write lock as another replica would: every write waits until the
/// returned transaction ends.
async fn hold_writer_lock(server: &TestServer) -> (DatabaseConnection, DatabaseTransaction) {
    let other = Database::connect(&server.database_url).await.unwrap();
    let lock = hold_write_lock(&other).await;
    (other, lock)
}

both_backends!(
    a_call_past_the_server_deadline_is_deadline_exceeded_and_a_system_fault,
    stuck_call
);
async fn stuck_call(backend: Backend) {
    let server = TestServer::spawn_with(Options {
        grpc: GrpcConfig {
            call_timeout: Duration::from_millis(300),
            ..GrpcConfig::default()
        },
        ..Options::new(backend)
    })
    .await;
    let mut node = server.node_provisioning().await;
    let (other, lock) = hold_writer_lock(&server).await;

    let (csr_pem, _key) = csr(WORKLOAD, &[]);
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        node.enroll(enroll_request("stuck-1", &csr_pem)),
    )
    .await
    .expect("the server answers at its deadline")
    .unwrap_err();
    lock.rollback().await.unwrap();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "SERVER_TIMEOUT");
    assert_eq!(info.domain, "mintgate");
    assert_eq!(
        info.metadata.get("fault").map(String::as_str),
        Some("system")
    );

    let scrape = Scrape::take(&server).await;
    let timed_out = [
        ("rpc", "Enroll"),
        ("class", "system"),
        ("reason", "SERVER_TIMEOUT"),
    ];
    assert_eq!(scrape.value(OUTCOMES, &timed_out), 1.0);
    let _ = other.close().await;
    server.shutdown().await;
}

both_backends!(
    a_call_past_the_client_deadline_is_deadline_exceeded_and_a_user_fault,
    client_deadline
);
async fn client_deadline(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    // A client that sends grpc-timeout but does not enforce it, so the server's answer is seen.
    let mut node = RawGrpc::node(&server).await;
    let (other, lock) = hold_writer_lock(&server).await;

    let (csr_pem, _key) = csr(WORKLOAD, &[]);
    let request = enroll_request("client-deadline-1", &csr_pem).encode_to_vec();
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        node.call(
            "/mintgate.v1.Provisioning/Enroll",
            &[("grpc-timeout", "300m")],
            &request,
        ),
    )
    .await
    .expect("the server answers at the client's deadline");
    let elapsed = started.elapsed();
    lock.rollback().await.unwrap();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    let status = answer.status();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().starts_with("Enroll: "), "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "CLIENT_TIMEOUT");
    assert_eq!(info.domain, "mintgate");
    assert_eq!(info.metadata.get("fault").map(String::as_str), Some("user"));
    assert_eq!(
        info.metadata.get("timeout_ms").map(String::as_str),
        Some("300")
    );

    let scrape = Scrape::take(&server).await;
    let labels = [
        ("rpc", "Enroll"),
        ("class", "user"),
        ("reason", "CLIENT_TIMEOUT"),
    ];
    assert_eq!(scrape.value(OUTCOMES, &labels), 1.0);
    assert_eq!(scrape.value(OUTCOMES, &[("rpc", "Enroll")]), 1.0);
    let _ = other.close().await;
    server.shutdown().await;
}
