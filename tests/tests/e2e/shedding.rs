//! Load shedding (`[grpc] max_issuances_in_flight`, `max_issuances_per_caller`): an issuance over
//! either limit is answered at once with RESOURCE_EXHAUSTED, reason CALLER_BUSY (a user fault) or
//! SERVER_BUSY (a system fault), and a RetryInfo saying how long to wait; nothing is recorded,
//! so the same request id is issued when asked again.

use std::time::Duration;

use mintgate_api::GrpcConfig;
use mintgate_sdk::{Client, Error, v1};
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::db::hold_write_lock;
use mintgate_tests::{Backend, Options, TestServer, both_backends};
use sea_orm::Database;
use tokio::task::JoinHandle;

use crate::issuance::enroll_request;
use crate::metrics::{OUTCOMES, Scrape};

fn workload(n: &str) -> String {
    format!("spiffe://dev.mintgate.local/workload/shed-{n}")
}

fn enroll(client: &Client, request_id: &str) -> JoinHandle<Result<v1::IssueResponse, Error>> {
    let (client, request_id) = (client.clone(), request_id.to_owned());
    tokio::spawn(async move {
        let (csr_pem, _key) = csr(&workload(&request_id), &[]);
        client.enroll(enroll_request(&request_id, &csr_pem)).await
    })
}

/// Of two calls, one waits behind the held write lock; the other must be the one answered
/// first, and refused.
async fn first_refused(
    a: &mut JoinHandle<Result<v1::IssueResponse, Error>>,
    b: &mut JoinHandle<Result<v1::IssueResponse, Error>>,
) -> (Error, bool) {
    let (first, a_first) = tokio::select! {
        r = &mut *a => (r, true),
        r = &mut *b => (r, false),
    };
    let refused = first
        .unwrap()
        .expect_err("the call answered first was shed");
    (refused, a_first)
}

fn assert_shed(error: &Error, reason: &str, fault: &str, limit: &str) {
    assert_eq!(error.code, tonic::Code::ResourceExhausted, "{error:?}");
    assert_eq!(error.reason, reason);
    assert_eq!(error.fault.as_deref(), Some(fault));
    assert_eq!(error.metadata["limit"], limit);
    let retry = error.retry_after.expect("RetryInfo");
    assert!(retry >= Duration::from_millis(50) && retry <= Duration::from_secs(300));
    assert!(error.is_retryable());
}

both_backends!(
    issuances_over_the_limits_are_shed_with_a_retry_time_and_issued_when_asked_again,
    shed
);
async fn shed(backend: Backend) {
    let server = TestServer::spawn_with(Options {
        grpc: GrpcConfig {
            max_issuances_in_flight: 2,
            max_issuances_per_caller: 1,
            ..GrpcConfig::default()
        },
        ..Options::new(backend)
    })
    .await;
    let (a, b, c) = (
        server.node().await,
        server.node_named("n2").await,
        server.node_named("n3").await,
    );
    // Every issuance that gets in waits on the database, as in a storm.
    let other = Database::connect(&server.database_url).await.unwrap();
    let lock = hold_write_lock(&other).await;

    // One node, two calls: one waits, the other is the caller's own limit.
    let (mut a1, mut a2) = (enroll(&a, "a-1"), enroll(&a, "a-2"));
    let (refused, a1_first) = first_refused(&mut a1, &mut a2).await;
    assert_shed(&refused, "CALLER_BUSY", "user", "1");
    let (waiting_a, shed_a) = if a1_first { (a2, "a-1") } else { (a1, "a-2") };
    // Two more nodes: one takes the server's last place, the other finds none.
    let (mut b1, mut c1) = (enroll(&b, "b-1"), enroll(&c, "c-1"));
    let (refused, b1_first) = first_refused(&mut b1, &mut c1).await;
    assert_shed(&refused, "SERVER_BUSY", "system", "2");
    let (waiting_other, shed_other, shed_by) = if b1_first {
        (c1, "b-1", &b)
    } else {
        (b1, "c-1", &c)
    };

    lock.rollback().await.unwrap();
    let _ = other.close().await;
    for waiting in [waiting_a, waiting_other] {
        let issued = waiting.await.unwrap().unwrap();
        assert_eq!(issued.state, v1::RequestState::Issued as i32);
    }
    // Nothing was recorded for a shed call: its request id is issued when asked again.
    for (client, request_id) in [(&a, shed_a), (shed_by, shed_other)] {
        let issued = enroll(client, request_id).await.unwrap().unwrap();
        let now = server.clock.now_odt().unix_timestamp();
        check_issued(
            &issued.certificate_chain_pem,
            &server.pki.ca.cert_pem,
            &workload(request_id),
            now,
        );
    }
    let rows = server.stored_rows().await;
    assert_eq!(rows.certificates.len(), 4, "{rows:?}");

    let scrape = Scrape::take(&server).await;
    for (reason, class) in [("CALLER_BUSY", "user"), ("SERVER_BUSY", "system")] {
        let labels = [("rpc", "Enroll"), ("class", class), ("reason", reason)];
        assert_eq!(scrape.value(OUTCOMES, &labels), 1.0, "{reason}");
    }
    server.shutdown().await;
}

/// The SDK sends at most as many issuances at once as the server serves calls on one
/// connection: with more, the rest would wait in HTTP/2 behind the server's stream limit, paced
/// by nothing.
#[test]
fn the_sdk_paces_to_the_servers_calls_per_connection() {
    assert_eq!(
        mintgate_sdk::ISSUANCES_ON_THE_WIRE,
        mintgate_api::MAX_CONCURRENT_CALLS_PER_CONNECTION
    );
}
