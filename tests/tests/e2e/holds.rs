//! Risk and holds (DESIGN §12): a burst from one node trips the rate signals and is held; two
//! distinct approvers release it and the requester's next call with its request id issues; a
//! denial, an expiry, a restart and a refusal by risk each behave as the requester and the
//! approvers expect. WatchPending follows every change.

use std::time::Duration;

use mintgate_domain::audit::verify_chain;
use mintgate_domain::policy::{PolicyFile, PolicySource};
use mintgate_domain::risk::{RiskConfig, Signal};
use mintgate_domain::store::CertificateStore;
use mintgate_sdk::v1;
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::{BOB_ID, Backend, NODE_ID, Options, TestServer, both_backends};
use tonic::Code;
use tonic::Streaming;

use crate::governance::{Admin, reason};
use crate::issuance::{WORKLOAD, enroll_request};
use crate::metrics::Scrape;
use crate::tools::Grpcurl;
use base64::Engine as _;

const PENDING: i32 = v1::RequestState::PendingApproval as i32;

/// Five requests from one node in a minute spike (and the dev policy holds high risk for two).
fn bursty(backend: Backend) -> Options {
    Options {
        risk: RiskConfig {
            spike_min_per_minute: 5,
            ..RiskConfig::default()
        },
        ..Options::new(backend)
    }
}

/// Every first issuance of an identity is elevated: the dev policy holds it for one approver.
fn first_is_elevated(backend: Backend) -> Options {
    let mut risk = mintgate_tests::quiet_risk();
    risk.weights.insert(Signal::FirstIssuance, 30);
    Options {
        risk,
        ..Options::new(backend)
    }
}

async fn watch(admin: &mut Admin) -> Streaming<v1::HoldEvent> {
    admin
        .watch_pending(v1::WatchPendingRequest {})
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn next(stream: &mut Streaming<v1::HoldEvent>) -> (v1::HoldEventKind, v1::Hold) {
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a hold event within 10 s")
        .unwrap()
        .expect("the stream is open");
    (event.kind(), event.hold.unwrap())
}

async fn vote(
    admin: &mut Admin,
    hold_id: &str,
    approve: bool,
    why: &str,
) -> Result<v1::Hold, tonic::Status> {
    let answer = if approve {
        let request = v1::ApproveRequest {
            hold_id: hold_id.to_owned(),
            reason: why.to_owned(),
        };
        admin.approve(request).await
    } else {
        let request = v1::DenyRequest {
            hold_id: hold_id.to_owned(),
            reason: why.to_owned(),
        };
        admin.deny(request).await
    };
    answer.map(tonic::Response::into_inner)
}

both_backends!(
    a_burst_is_held_and_two_distinct_approvers_release_it,
    burst_is_held
);
async fn burst_is_held(backend: Backend) {
    let server = TestServer::spawn_with(bursty(backend)).await;
    let mut bob = server.admin_as("bob").await;
    let mut admin = server.admin_as("admin").await;
    let mut events = watch(&mut bob).await;
    let node = server.node().await;
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    for i in 1..=4 {
        let answer = node
            .enroll(enroll_request(&format!("b-{i}"), &csr_pem))
            .await
            .unwrap();
        assert_eq!(answer.state, v1::RequestState::Issued as i32);
    }

    // The fifth in a minute: the node's and the identity's rate spike, so risk is high.
    let held = node.enroll(enroll_request("b-5", &csr_pem)).await.unwrap();
    assert_eq!(held.state, PENDING);
    assert!(held.certificate_chain_pem.is_empty() && held.serial.is_empty());
    assert_eq!(held.retry_after.unwrap().seconds, 10);
    let hold = held.hold.unwrap();
    assert_eq!(
        (hold.reason.as_str(), hold.quorum, hold.approvals),
        ("high risk", 2, 0)
    );
    let risk = hold.risk.clone().unwrap();
    assert_eq!(risk.tier, "high");
    for signal in ["node_rate_spike_1m", "identity_rate_spike_1m"] {
        assert!(risk.signals.contains(&signal.to_owned()), "{risk:?}");
    }
    assert_eq!(
        (hold.requester.as_str(), hold.spiffe_id.as_str()),
        (NODE_ID, WORKLOAD)
    );
    let (kind, seen) = next(&mut events).await;
    assert_eq!(
        (kind, seen.hold_id.as_str()),
        (v1::HoldEventKind::Held, hold.hold_id.as_str())
    );

    // Asked again with the same request id: the same pending answer, nothing new recorded.
    let again = node.enroll(enroll_request("b-5", &csr_pem)).await.unwrap();
    assert_eq!(
        (again.state, again.hold.unwrap().hold_id),
        (PENDING, hold.hold_id.clone())
    );

    let list = |tier: &str| v1::ListPendingRequest {
        tier: tier.to_owned(),
        ..Default::default()
    };
    let pending = bob.list_pending(list("")).await.unwrap().into_inner().holds;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        bob.list_pending(list("high"))
            .await
            .unwrap()
            .into_inner()
            .holds
            .len(),
        1
    );
    assert!(
        bob.list_pending(list("low"))
            .await
            .unwrap()
            .into_inner()
            .holds
            .is_empty()
    );
    let bad = bob.list_pending(list("severe")).await.unwrap_err();
    assert_eq!(
        (bad.code(), reason(&bad).as_str()),
        (Code::InvalidArgument, "RISK_TIER_INVALID")
    );

    // One approval is not the quorum; nobody approves twice.
    let after_bob = vote(&mut bob, &hold.hold_id, true, "expected rollout")
        .await
        .unwrap();
    assert_eq!((after_bob.state, after_bob.approvals), (PENDING, 1));
    assert_eq!(next(&mut events).await.0, v1::HoldEventKind::Approved);
    let twice = vote(&mut bob, &hold.hold_id, true, "again")
        .await
        .unwrap_err();
    assert_eq!(
        (twice.code(), reason(&twice).as_str()),
        (Code::AlreadyExists, "ALREADY_VOTED")
    );
    let still = node.enroll(enroll_request("b-5", &csr_pem)).await.unwrap();
    assert_eq!((still.state, still.hold.unwrap().approvals), (PENDING, 1));

    // A second approver completes it; the requester's next call issues.
    let released = vote(&mut admin, &hold.hold_id, true, "").await.unwrap();
    assert_eq!(released.state, v1::RequestState::Approved as i32);
    assert_eq!(next(&mut events).await.0, v1::HoldEventKind::Released);
    let issued = node.enroll(enroll_request("b-5", &csr_pem)).await.unwrap();
    assert_eq!(issued.state, v1::RequestState::Issued as i32);
    let now = server.clock.now_odt().unix_timestamp();
    check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        now,
    );
    let late = vote(&mut bob, &hold.hold_id, false, "too late")
        .await
        .unwrap_err();
    assert_eq!(
        (late.code(), reason(&late).as_str()),
        (Code::FailedPrecondition, "HOLD_CLOSED")
    );

    let chain = server.store().audit_chain().await.unwrap();
    assert_eq!(verify_chain(chain.clone()), Ok(chain.len() as u64));
    let actions: Vec<&str> = chain.iter().map(|e| e.event.action.as_str()).collect();
    let held_at = actions.iter().position(|a| *a == "request.held").unwrap();
    assert_eq!(
        actions[held_at..]
            .iter()
            .filter(|a| a.starts_with("hold.")
                || a.starts_with("request.")
                || a.starts_with("certificate."))
            .copied()
            .collect::<Vec<_>>(),
        [
            "request.held",
            "hold.approved",
            "hold.approved",
            "request.released",
            "request.retried",
            "certificate.issued"
        ]
    );
    let scrape = Scrape::take(&server).await;
    assert_eq!(
        scrape.value("mintgate_holds_total", &[("change", "held")]),
        1.0
    );
    assert_eq!(
        scrape.value("mintgate_holds_total", &[("change", "released")]),
        1.0
    );
    assert!(scrape.value("mintgate_risk_tier_total", &[("tier", "high")]) >= 1.0);
    assert!(
        scrape.value(
            "mintgate_risk_signals_total",
            &[("signal", "node_rate_spike_1m")]
        ) >= 1.0
    );
    assert!(scrape.value("mintgate_risk_tier_total", &[("tier", "low")]) >= 4.0);
}

both_backends!(
    a_denied_hold_refuses_and_an_undecided_one_expires,
    deny_and_expire
);
async fn deny_and_expire(backend: Backend) {
    let server = TestServer::spawn_with(first_is_elevated(backend)).await;
    let mut bob = server.admin_as("bob").await;
    let node = server.node().await;
    let held = |request_id: &'static str, path: &'static str| {
        let node = node.clone();
        async move {
            let (csr_pem, _) = csr(&format!("spiffe://dev.mintgate.local/workload/{path}"), &[]);
            let answer = node
                .enroll(enroll_request(request_id, &csr_pem))
                .await
                .unwrap();
            assert_eq!(answer.state, PENDING);
            let hold = answer.hold.unwrap();
            assert_eq!((hold.reason.as_str(), hold.quorum), ("elevated risk", 1));
            (csr_pem, hold)
        }
    };

    // Denied: a reason is required, and the requester is told it.
    let (csr_a, hold_a) = held("d-1", "a").await;
    let no_reason = vote(&mut bob, &hold_a.hold_id, false, " ")
        .await
        .unwrap_err();
    assert_eq!(reason(&no_reason), "REASON_REQUIRED");
    let denied = vote(&mut bob, &hold_a.hold_id, false, "not in the change plan")
        .await
        .unwrap();
    assert_eq!(denied.state, v1::RequestState::Denied as i32);
    let refused = node
        .enroll(enroll_request("d-1", &csr_a))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (Code::PermissionDenied, "HOLD_DENIED")
    );
    assert!(
        refused.message.contains("not in the change plan"),
        "{}",
        refused.message
    );
    assert_eq!(
        refused.detail("denial_reason"),
        Some("not in the change plan")
    );
    let status = node.get_request("d-1").await.unwrap();
    assert_eq!(
        (status.state, status.reason.as_str()),
        (v1::RequestState::Denied as i32, "HOLD_DENIED")
    );
    assert_eq!(status.hold.unwrap().reason, "elevated risk");
    assert!(
        status
            .risk
            .unwrap()
            .signals
            .contains(&"first_issuance".to_owned())
    );

    // Undecided past its expiry: the requester's next call says so, and so does the sweeper.
    let mut events = watch(&mut bob).await;
    let (csr_b, hold_b) = held("x-1", "b").await;
    assert_eq!(next(&mut events).await.0, v1::HoldEventKind::Held);
    let (_, hold_c) = held("x-2", "c").await;
    assert_eq!(next(&mut events).await.0, v1::HoldEventKind::Held);
    server.clock.advance(Duration::from_secs(3600));
    let expired = node
        .enroll(enroll_request("x-1", &csr_b))
        .await
        .unwrap_err();
    assert_eq!(
        (expired.code, expired.reason.as_str()),
        (Code::FailedPrecondition, "HOLD_EXPIRED")
    );
    let (kind, hold) = next(&mut events).await;
    assert_eq!(
        (kind, hold.hold_id),
        (v1::HoldEventKind::Expired, hold_b.hold_id)
    );
    // Nobody asked about the other one: the sweeper expires it.
    let (kind, hold) = next(&mut events).await;
    assert_eq!(
        (kind, hold.hold_id.as_str()),
        (v1::HoldEventKind::Expired, hold_c.hold_id.as_str())
    );
    let late = vote(&mut bob, &hold_c.hold_id, true, "").await.unwrap_err();
    assert_eq!(reason(&late), "HOLD_EXPIRED");
    let pending = bob
        .list_pending(v1::ListPendingRequest::default())
        .await
        .unwrap();
    assert!(pending.into_inner().holds.is_empty());
    let chain = server.store().audit_chain().await.unwrap();
    assert_eq!(verify_chain(chain.clone()), Ok(chain.len() as u64));
    let count = |action: &str| chain.iter().filter(|e| e.event.action == action).count();
    assert_eq!((count("hold.denied"), count("request.expired")), (1, 2));
}

both_backends!(
    a_hold_survives_a_restart_and_approval_after_it_issues,
    survives_restart
);
async fn survives_restart(backend: Backend) {
    let server = TestServer::spawn_with(first_is_elevated(backend)).await;
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let held = server
        .node()
        .await
        .enroll(enroll_request("r-1", &csr_pem))
        .await
        .unwrap();
    let hold_id = held.hold.unwrap().hold_id;

    let server = server.restart().await;
    let mut bob = server.admin_as("bob").await;
    let pending = bob
        .list_pending(v1::ListPendingRequest::default())
        .await
        .unwrap();
    assert_eq!(pending.into_inner().holds[0].hold_id, hold_id);
    let node = server.node().await;
    let still = node.enroll(enroll_request("r-1", &csr_pem)).await.unwrap();
    assert_eq!(still.state, PENDING);
    vote(&mut bob, &hold_id, true, "known workload")
        .await
        .unwrap();
    let issued = node.enroll(enroll_request("r-1", &csr_pem)).await.unwrap();
    let now = server.clock.now_odt().unix_timestamp();
    check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        now,
    );
}

/// Issuance of operator identities (for the self-approval test), always held for two, and a
/// forbid on risk.
const EXTRA: &str = r#"
@id("operator-identities")
permit (principal, action == Action::"Issue", resource)
when { resource.path like "/operator/*" };

@id("hold-operator-identities")
@hold("an operator identity")
@quorum("2")
permit (principal, action == Action::"Hold", resource)
when { resource.path like "/operator/*" };

@id("no-new-payments")
forbid (principal, action == Action::"Issue", resource)
when { resource.path like "/workload/payments*" && context.risk.signals.contains("first_issuance") };
"#;

both_backends!(
    approvers_never_release_their_own_identity_and_risk_can_refuse,
    self_and_refusal
);
async fn self_and_refusal(backend: Backend) {
    let mut policy = PolicySource::dev();
    policy.files.push(PolicyFile {
        name: "extra.cedar".to_owned(),
        text: EXTRA.to_owned(),
    });
    let server = TestServer::spawn_with(Options {
        policy: Some(policy),
        ..Options::new(backend)
    })
    .await;
    let node = server.node().await;

    // A certificate for bob's own operator identity: bob cannot release it, admin included.
    let (csr_pem, _) = csr(BOB_ID, &[]);
    let held = node.enroll(enroll_request("o-1", &csr_pem)).await.unwrap();
    let hold = held.hold.unwrap();
    assert_eq!(
        (hold.reason.as_str(), hold.quorum),
        ("an operator identity", 2)
    );
    let mut bob = server.admin_as("bob").await;
    let own = vote(&mut bob, &hold.hold_id, true, "me").await.unwrap_err();
    assert_eq!(
        (own.code(), reason(&own).as_str()),
        (Code::PermissionDenied, "SELF_APPROVAL")
    );
    // Alice holds no approver role; a hold id that is not one is a clear error.
    let mut alice = server.admin_as("alice").await;
    let denied = vote(&mut alice, &hold.hold_id, true, "").await.unwrap_err();
    assert_eq!(reason(&denied), "POLICY_DENIED");
    let denied = alice
        .watch_pending(v1::WatchPendingRequest {})
        .await
        .unwrap_err();
    assert_eq!(reason(&denied), "POLICY_DENIED");
    let bad = vote(&mut bob, "h-1", true, "").await.unwrap_err();
    assert_eq!(reason(&bad), "HOLD_ID_INVALID");

    // A forbid on risk: refused with the signals named.
    let (csr_pem, _) = csr("spiffe://dev.mintgate.local/workload/payments", &[]);
    let refused = node
        .enroll(enroll_request("p-1", &csr_pem))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (Code::PermissionDenied, "POLICY_DENIED")
    );
    assert_eq!(
        refused.detail("determining_policies"),
        Some("no-new-payments")
    );
    assert!(
        refused
            .detail("risk_signals")
            .unwrap()
            .contains("first_issuance")
    );
    assert!(
        refused.message.contains("first_issuance"),
        "{}",
        refused.message
    );
    let record = server
        .store()
        .find_request(NODE_ID, "p-1")
        .await
        .unwrap()
        .unwrap();
    assert!(
        record
            .risk
            .unwrap()
            .signals
            .contains(&Signal::FirstIssuance)
    );
}

/// The README tour's hold section with grpcurl: a burst is held, WatchPending shows it, two
/// operators approve it, the same request id issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_follows_approves_and_releases_a_hold() {
    if !mintgate_tests::tool_available("grpcurl") {
        return;
    }
    let server = TestServer::spawn_with(bursty(Backend::Sqlite)).await;
    let pki = &server.pki;
    let node = Grpcurl::holding(&server, &pki.node.cert_pem, &pki.node.key_pem);
    let bob = Grpcurl::holding(&server, &pki.bob.cert_pem, &pki.bob.key_pem);
    let admin = Grpcurl::admin(&server);
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let body = |rid: &str| {
        let csr = base64::engine::general_purpose::STANDARD.encode(&csr_pem);
        format!(r#"{{"request_id":"{rid}","csr":"{csr}"}}"#)
    };
    let enroll = |rid: &str| {
        node.json(&[], &body(rid), "mintgate.v1.Provisioning/Enroll")
            .1
    };
    for i in 1..=4 {
        assert_eq!(
            enroll(&format!("g-{i}"))[0]["state"],
            "REQUEST_STATE_ISSUED"
        );
    }
    let held = enroll("g-5");
    assert_eq!(
        held[0]["state"], "REQUEST_STATE_PENDING_APPROVAL",
        "{held:?}"
    );
    assert_eq!(held[0]["retryAfter"], "10s");
    assert!(held[0].get("certificateChainPem").is_none());

    // WatchPending prints what waits (and would follow what changes until its deadline).
    let (_, watched) = bob.json(&["-max-time", "2"], "{}", "mintgate.v1.Admin/WatchPending");
    assert_eq!(watched[0]["kind"], "HOLD_EVENT_KIND_PENDING", "{watched:?}");
    let hold_id = watched[0]["hold"]["holdId"].as_str().unwrap().to_owned();
    assert_eq!(watched[0]["hold"]["requestId"], "g-5");
    assert_eq!(watched[0]["hold"]["risk"]["tier"], "high");
    let (_, listed) = bob.json(&[], r#"{"tier":"high"}"#, "mintgate.v1.Admin/ListPending");
    assert_eq!(listed[0]["holds"][0]["holdId"], hold_id.as_str());

    let approve = format!(r#"{{"hold_id":"{hold_id}","reason":"planned rollout"}}"#);
    let (_, first) = bob.json(&[], &approve, "mintgate.v1.Admin/Approve");
    assert_eq!(
        (first[0]["approvals"].as_u64(), first[0]["quorum"].as_u64()),
        (Some(1), Some(2))
    );
    let again = bob.call(&["-d", &approve], &["mintgate.v1.Admin/Approve"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("ALREADY_VOTED"),
        "{again:?}"
    );
    let (_, released) = admin.json(&[], &approve, "mintgate.v1.Admin/Approve");
    assert_eq!(released[0]["state"], "REQUEST_STATE_APPROVED");

    let issued = enroll("g-5");
    assert_eq!(issued[0]["state"], "REQUEST_STATE_ISSUED");
    let chain = issued[0]["certificateChainPem"].as_str().unwrap();
    let now = server.clock.now_odt().unix_timestamp();
    check_issued(chain, &server.pki.ca.cert_pem, WORKLOAD, now);
}
