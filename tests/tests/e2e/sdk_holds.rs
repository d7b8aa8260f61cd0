//! The SDK's credential manager and the agent against a server whose policy holds requests for
//! approvers (DESIGN §12): they wait `retry_after` on the injected clock, ask again with the
//! same request id and key (one request row, one hold), report the hold, and carry on once it
//! is released; a denial ends the request with HOLD_DENIED and the approver's reason.

use std::sync::Arc;
use std::time::Duration;

use mintgate_domain::policy::{PolicyFile, PolicySource};
use mintgate_sdk::agent::{AgentConfig, AgentExit, run};
use mintgate_sdk::{
    Attestation, CredentialManager, CredentialState, Endpoint, Error, HOLD_DENIED, Held,
    RenewalPolicy, v1,
};
use mintgate_tests::csr::check_issued;
use mintgate_tests::{Backend, NODE_ID, Options, TestServer, both_backends};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::agent::eventually;
use crate::sdk::GatedClock;

const WEB: &str = "spiffe://dev.mintgate.local/workload/web";
/// The server's default `retry_after` for a held request.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The dev policy, plus a permit of Hold for the principals `scope` names (every request with
/// `principal`, renewals only with `principal is Workload`).
fn holding(scope: &str, reason: &str) -> PolicySource {
    let mut policy = PolicySource::dev();
    policy.files.push(PolicyFile {
        name: "hold-test.cedar".to_owned(),
        text: format!(
            "@id(\"hold-test\")\n@hold(\"{reason}\")\n\
             permit ({scope}, action == Action::\"Hold\", resource);\n"
        ),
    });
    policy
}

async fn spawn_holding(backend: Backend, scope: &str, reason: &str) -> TestServer {
    TestServer::spawn_with(Options {
        policy: Some(holding(scope, reason)),
        ..Options::new(backend)
    })
    .await
}

/// A gated clock over the server's clock, its gate and the sleeps it is asked for.
fn gated(
    server: &TestServer,
) -> (
    Arc<GatedClock>,
    Arc<Semaphore>,
    mpsc::UnboundedReceiver<Duration>,
) {
    let gate = Arc::new(Semaphore::new(0));
    let (sleeps_tx, sleeps) = mpsc::unbounded_channel();
    let clock = Arc::new(GatedClock {
        clock: server.clock.clone(),
        gate: gate.clone(),
        sleeps: sleeps_tx,
    });
    (clock, gate, sleeps)
}

async fn next_sleep(sleeps: &mut mpsc::UnboundedReceiver<Duration>) -> Duration {
    tokio::time::timeout(Duration::from_secs(15), sleeps.recv())
        .await
        .expect("the manager sleeps")
        .unwrap()
}

fn endpoint(server: &TestServer) -> Endpoint {
    Endpoint {
        url: server.url(),
        server_name: "localhost".into(),
    }
}

fn policy() -> RenewalPolicy {
    RenewalPolicy {
        ttl: Some(Duration::from_secs(600)),
        ..RenewalPolicy::default()
    }
}

/// `WEB` enrolling through the dev node on `clock`, in the background, and the state it
/// reports.
async fn enroll_in_background(
    server: &TestServer,
    clock: Arc<GatedClock>,
) -> (
    tokio::task::JoinHandle<Result<CredentialManager, mintgate_sdk::Error>>,
    watch::Receiver<CredentialState>,
) {
    let (state_tx, state) = watch::channel(CredentialState::Enrolling);
    let (node, endpoint) = (server.node().await, endpoint(server));
    let enroll = tokio::spawn(async move {
        CredentialManager::enroll_reporting(
            &node,
            endpoint,
            WEB,
            Attestation::default(),
            policy(),
            clock,
            state_tx,
        )
        .await
    });
    (enroll, state)
}

fn held(state: &watch::Receiver<CredentialState>) -> Held {
    state.borrow().held().cloned().expect("the state is held")
}

async fn pending(server: &TestServer) -> Vec<v1::Hold> {
    server
        .admin_as("bob")
        .await
        .list_pending(v1::ListPendingRequest::default())
        .await
        .unwrap()
        .into_inner()
        .holds
}

async fn approve(server: &TestServer, hold_id: &str) {
    server
        .admin_as("bob")
        .await
        .approve(v1::ApproveRequest {
            hold_id: hold_id.to_owned(),
            reason: "looks fine".into(),
        })
        .await
        .unwrap();
}

/// The node's stored requests as (request_id, state).
async fn node_requests(server: &TestServer) -> Vec<(String, String)> {
    let rows = server.stored_rows().await;
    rows.requests
        .into_iter()
        .filter(|(caller, _, _)| caller == NODE_ID)
        .map(|(_, id, state)| (id, state))
        .collect()
}

/// The certificate in `chain_pem` certifies the key in `key_pem`.
fn assert_key_matches(chain_pem: &str, key_pem: &str) {
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let der = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
}

both_backends!(
    the_credential_manager_waits_through_a_hold_with_one_request,
    manager_waits
);
async fn manager_waits(backend: Backend) {
    let server = spawn_holding(backend, "principal", "test hold").await;
    let (clock, gate, mut sleeps) = gated(&server);
    let (enroll, state) = enroll_in_background(&server, clock).await;

    // Held: the manager waits the server's retry_after on the injected clock, and says why.
    assert_eq!(next_sleep(&mut sleeps).await, RETRY_AFTER);
    let first = held(&state);
    assert_eq!(first.reason, "test hold");
    assert_eq!(
        (first.approvals, first.quorum, first.kind.as_str()),
        (0, 1, "ENROLL")
    );
    // Asked again after the wait: still held, the same request and the same hold.
    gate.add_permits(1);
    assert_eq!(next_sleep(&mut sleeps).await, RETRY_AFTER);
    let again = held(&state);
    assert_eq!(
        (&again.request_id, &again.hold_id),
        (&first.request_id, &first.hold_id)
    );
    let holds = pending(&server).await;
    assert_eq!(holds.len(), 1, "one hold for one need");
    assert_eq!(holds[0].hold_id, first.hold_id);
    assert!(!enroll.is_finished());

    // Released: the next call (same request id) issues.
    approve(&server, &first.hold_id).await;
    gate.add_permits(1);
    let manager = tokio::time::timeout(Duration::from_secs(15), enroll)
        .await
        .expect("enrolled once released")
        .unwrap()
        .unwrap();
    let credential = manager.current();
    check_issued(
        &credential.chain_pem,
        &server.pki.ca.cert_pem,
        WEB,
        server.clock.now_odt().unix_timestamp(),
    );
    // The key generated before the hold is the key certified after it.
    assert_key_matches(&credential.chain_pem, &credential.key_pem);
    assert_eq!(*manager.state().borrow(), CredentialState::Current);
    assert_eq!(
        node_requests(&server).await,
        [(first.request_id.clone(), "ISSUED".to_owned())],
        "one request row"
    );
    let status = server
        .node()
        .await
        .get_request(&first.request_id)
        .await
        .unwrap();
    assert_eq!(status.state(), v1::RequestState::Issued);
    assert!(pending(&server).await.is_empty());
    server.shutdown().await;
}

both_backends!(
    a_denied_hold_ends_the_enrollment_with_hold_denied,
    manager_denied
);
async fn manager_denied(backend: Backend) {
    let server = spawn_holding(backend, "principal", "test hold").await;
    let (clock, gate, mut sleeps) = gated(&server);
    let (enroll, state) = enroll_in_background(&server, clock).await;
    assert_eq!(next_sleep(&mut sleeps).await, RETRY_AFTER);
    let hold = held(&state);
    server
        .admin_as("bob")
        .await
        .deny(v1::DenyRequest {
            hold_id: hold.hold_id.clone(),
            reason: "nobody asked for web here".into(),
        })
        .await
        .unwrap();
    gate.add_permits(1);
    let err: Error = tokio::time::timeout(Duration::from_secs(15), enroll)
        .await
        .expect("the enrollment ends")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (tonic::Code::PermissionDenied, HOLD_DENIED)
    );
    assert!(
        err.message.contains("nobody asked for web here"),
        "the approver's reason: {err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(*state.borrow(), CredentialState::Refused(err));
    // Final: no further wait, no second request.
    assert!(sleeps.try_recv().is_err());
    let requests = node_requests(&server).await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].0, hold.request_id);
    server.shutdown().await;
}

both_backends!(
    the_agent_reports_a_held_enrollment_then_writes_its_files,
    agent_held
);
async fn agent_held(backend: Backend) {
    let server = spawn_holding(backend, "principal", "test hold").await;
    let (clock, gate, mut sleeps) = gated(&server);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("certs");
    let health_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let config = AgentConfig {
        endpoint: endpoint(&server),
        ca_pem: server.pki.ca.cert_pem.clone(),
        node_cert_pem: server.pki.node.cert_pem.clone(),
        node_key_pem: server.pki.node.key_pem.clone(),
        spiffe_id: WEB.into(),
        join_token: None,
        service_account_token_file: None,
        out_dir: dir.clone(),
        policy: policy(),
        hook: None,
        signal_pid: None,
        health_addr: Some(health_addr),
        max_staleness: Duration::from_secs(60),
        workload_api: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, clock, async {
        let _ = stopped.await;
    }));

    // Held: /healthz says so with the reason; nothing is written.
    assert_eq!(next_sleep(&mut sleeps).await, RETRY_AFTER);
    let (status, body) = mintgate_tests::http_get(health_addr, "/healthz").await;
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("held: test hold (hold "), "{body}");
    assert!(!dir.join("cert.pem").exists());
    assert!(!dir.join("key.pem").exists());
    gate.add_permits(1);
    assert_eq!(next_sleep(&mut sleeps).await, RETRY_AFTER);
    let holds = pending(&server).await;
    assert_eq!(holds.len(), 1, "one hold for one need");

    // Released: the agent writes its files and turns healthy.
    approve(&server, &holds[0].hold_id).await;
    gate.add_permits(1);
    eventually("the files", || dir.join("cert.pem").exists()).await;
    let cert_pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let key_pem = std::fs::read_to_string(dir.join("key.pem")).unwrap();
    check_issued(
        &cert_pem,
        &server.pki.ca.cert_pem,
        WEB,
        server.clock.now_odt().unix_timestamp(),
    );
    assert_key_matches(&cert_pem, &key_pem);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = mintgate_tests::http_get(health_addr, "/healthz").await;
        if status == 200 {
            assert_eq!(body, b"ok\n");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never healthy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        node_requests(&server).await,
        [(holds[0].request_id.clone(), "ISSUED".to_owned())]
    );
    drop(stop);
    let exit = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the agent stops")
        .unwrap()
        .unwrap();
    assert_eq!(exit, AgentExit::Shutdown);
    server.shutdown().await;
}

both_backends!(
    a_held_renewal_is_asked_again_with_its_request_id_until_released,
    renewal_released
);
async fn renewal_released(backend: Backend) {
    held_renewal(backend, true).await;
}

both_backends!(
    a_denied_renewal_keeps_the_current_certificate_and_stops_renewing,
    renewal_denied
);
async fn renewal_denied(backend: Backend) {
    held_renewal(backend, false).await;
}

/// Renewals only are held; the manager enrolls at once, then its renewal waits for approvers.
async fn held_renewal(backend: Backend, release: bool) {
    let server = spawn_holding(backend, "principal is Workload", "renewal hold").await;
    let (clock, gate, mut sleeps) = gated(&server);
    let manager = CredentialManager::enroll(
        &server.node().await,
        endpoint(&server),
        WEB,
        Attestation::default(),
        policy(),
        clock,
    )
    .await
    .unwrap();
    let first = manager.current();
    let state = manager.state();
    let mut updates = manager.subscribe();
    // The renewal time comes; the renewal is held.
    next_sleep(&mut sleeps).await;
    gate.add_permits(1);
    assert_eq!(next_sleep(&mut sleeps).await, RETRY_AFTER);
    let hold = held(&state);
    assert_eq!(
        (hold.kind.as_str(), hold.reason.as_str()),
        ("RENEW", "renewal hold")
    );
    gate.add_permits(1);
    assert_eq!(next_sleep(&mut sleeps).await, RETRY_AFTER);
    assert_eq!(held(&state).request_id, hold.request_id, "the same request");
    assert_eq!(
        manager.current(),
        first,
        "the current certificate stays in use"
    );

    if release {
        approve(&server, &hold.hold_id).await;
        gate.add_permits(1);
        tokio::time::timeout(Duration::from_secs(15), updates.changed())
            .await
            .expect("renewed once released")
            .unwrap();
        let renewed = manager.current();
        assert_ne!(renewed.serial, first.serial);
        assert_key_matches(&renewed.chain_pem, &renewed.key_pem);
        assert_eq!(*state.borrow(), CredentialState::Current);
        let rows = server.stored_rows().await;
        let renewals: Vec<_> = rows.requests.iter().filter(|r| r.0 == WEB).collect();
        assert_eq!(renewals.len(), 1, "one renewal request: {renewals:?}");
        assert_eq!(renewals[0].1, hold.request_id);
    } else {
        let mut bob = server.admin_as("bob").await;
        bob.deny(v1::DenyRequest {
            hold_id: hold.hold_id.clone(),
            reason: "not now".into(),
        })
        .await
        .unwrap();
        gate.add_permits(1);
        // Refused for good: the manager waits for the certificate's end, asking nothing more.
        next_sleep(&mut sleeps).await;
        let CredentialState::Refused(err) = state.borrow().clone() else {
            panic!("refused: {:?}", state.borrow());
        };
        assert_eq!(err.reason, HOLD_DENIED);
        assert_eq!(manager.current(), first);
        assert!(updates.has_changed().is_ok(), "the channel stays open");
        assert!(sleeps.try_recv().is_err());
    }
    server.shutdown().await;
}
