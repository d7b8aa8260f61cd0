//! The server's own call deadline (`[grpc] call_timeout_ms`): a call it cannot answer in time —
//! here an Enroll whose write waits behind another replica's writer lock — ends as
//! DEADLINE_EXCEEDED with ErrorInfo reason SERVER_TIMEOUT, fault=system, and is counted as a
//! system fault.

use std::time::Duration;

use mintgate_api::GrpcConfig;
use mintgate_tests::csr::csr;
use mintgate_tests::db::hold_write_lock;
use mintgate_tests::{Backend, Options, TestServer, both_backends};
use sea_orm::Database;
use tonic::Code;
use tonic_types::StatusExt;

use crate::issuance::{WORKLOAD, enroll_request};
use crate::metrics::{OUTCOMES, Scrape};

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

    // Another replica holds the database's write lock, as the store itself takes it.
    let other = Database::connect(&server.database_url).await.unwrap();
    let lock = hold_write_lock(&other).await;

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
