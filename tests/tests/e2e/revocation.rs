//! Revocation end to end: Revoke, the watch feed, CheckStatus, the CRL, and a revoked peer cut
//! off at the handshake and on the connections it already had.

use std::time::{Duration, Instant};

use mintgate_api::HubConfig;
use mintgate_sdk::v1;
use mintgate_sdk::v1::watch_revocations_response::Message;
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::{Backend, Options, TestServer, both_backends};
use tonic::Code;
use tonic::Streaming;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::issuance::enroll_request;

const WEB: &str = "spiffe://dev.mintgate.local/workload/web";
const DB: &str = "spiffe://dev.mintgate.local/workload/db";

/// A workload certificate and key, issued through the node.
pub(crate) struct Workload {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
    pub(crate) serial: String,
}

pub(crate) async fn enroll(server: &TestServer, id: &str, request_id: &str) -> Workload {
    let now = server.clock.now_odt().unix_timestamp();
    let (csr_pem, key) = csr(id, &[]);
    let issued = server
        .node()
        .await
        .enroll(enroll_request(request_id, &csr_pem))
        .await
        .unwrap();
    check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        id,
        now,
    );
    Workload {
        chain_pem: issued.certificate_chain_pem,
        key_pem: key.serialize_pem(),
        serial: issued.serial,
    }
}

pub(crate) fn revoke_request(
    request_id: &str,
    serial: &str,
    reason: v1::RevocationReason,
) -> v1::RevokeRequest {
    v1::RevokeRequest {
        request_id: request_id.into(),
        serial: serial.into(),
        reason: reason.into(),
    }
}

async fn next(stream: &mut Streaming<v1::WatchRevocationsResponse>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .expect("the stream is open")
        .message
        .unwrap()
}

/// The next revocation event, skipping heartbeats.
async fn next_event(stream: &mut Streaming<v1::WatchRevocationsResponse>) -> v1::RevocationEvent {
    loop {
        match next(stream).await {
            Message::Event(e) => return e,
            Message::Heartbeat(_) => {}
            Message::Snapshot(s) => panic!("unexpected snapshot {s:?}"),
        }
    }
}

fn fast_heartbeats(backend: Backend) -> Options {
    Options {
        revocation: HubConfig {
            heartbeat: Duration::from_millis(100),
            ..HubConfig::default()
        },
        ..Options::new(backend)
    }
}

both_backends!(
    a_revocation_reaches_watchers_and_cuts_the_peer_off,
    revoke_and_watch
);
async fn revoke_and_watch(backend: Backend) {
    let server = TestServer::spawn_with(fast_heartbeats(backend)).await;
    let web = enroll(&server, WEB, "web").await;
    let db = enroll(&server, DB, "db").await;
    let mut admin = server.admin_revocation().await;

    // A watcher from the beginning: the replay is empty, then a heartbeat at head 0.
    let mut watch = admin
        .watch_revocations(v1::WatchRevocationsRequest { cursor: 0 })
        .await
        .unwrap()
        .into_inner();
    match next(&mut watch).await {
        Message::Heartbeat(h) => assert_eq!(h.head_seq, 0),
        other => panic!("expected a heartbeat, got {other:?}"),
    }

    // The web workload holds an open connection.
    let mut web_conn = server.revocation_as(&web.chain_pem, &web.key_pem).await;
    web_conn
        .check_status(v1::CheckStatusRequest { serials: vec![] })
        .await
        .unwrap();

    let started = Instant::now();
    let revoked = admin
        .revoke(revoke_request(
            "r-1",
            &web.serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap()
        .into_inner()
        .revocation
        .unwrap();
    let event = next_event(&mut watch).await;
    eprintln!("revocation: commit to delivery {:?}", started.elapsed());
    assert_eq!(event, revoked);
    assert_eq!(event.seq, 1);
    assert_eq!(event.serial, web.serial);
    assert_eq!(event.spiffe_id, WEB);
    assert_eq!(event.reason(), v1::RevocationReason::KeyCompromise);

    // The same request again answers the same; another one is refused with its own reason.
    let again = admin
        .revoke(revoke_request(
            "r-1",
            &web.serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revocation.unwrap(), revoked);
    let err = admin
        .revoke(revoke_request(
            "r-2",
            &web.serial,
            v1::RevocationReason::Unspecified,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "ALREADY_REVOKED");

    // The revoked certificate's open connection is closed, and it cannot connect again.
    let cut = web_conn
        .check_status(v1::CheckStatusRequest { serials: vec![] })
        .await
        .unwrap_err();
    assert!(
        matches!(
            cut.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{cut:?}"
    );
    assert!(
        refused_at_handshake(&server, &web).await,
        "a revoked certificate completed a call"
    );

    // CheckStatus: revoked, good, unknown, in the order asked (twice is answered twice);
    // with the head.
    let status = admin
        .check_status(v1::CheckStatusRequest {
            serials: vec![
                web.serial.clone(),
                db.serial.to_uppercase(),
                "0badc0de".into(),
                web.serial.clone(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.head_seq, 1);
    let states: Vec<_> = status.statuses.iter().map(|s| s.status()).collect();
    assert_eq!(
        states,
        [
            v1::CertificateStatus::Revoked,
            v1::CertificateStatus::Good,
            v1::CertificateStatus::Unknown,
            v1::CertificateStatus::Revoked,
        ]
    );
    assert_eq!(status.statuses[0].revocation.as_ref(), Some(&revoked));
    assert_eq!(status.statuses[3], status.statuses[0]);
    assert_eq!(status.statuses[1].serial, db.serial);

    // A workload may revoke its own certificate, and nobody else's.
    let mut db_conn = server.revocation_as(&db.chain_pem, &db.key_pem).await;
    let other = enroll(&server, "spiffe://dev.mintgate.local/workload/api", "api").await;
    let err = db_conn
        .revoke(revoke_request(
            "x",
            &other.serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "POLICY_DENIED")
    );
    // The message says which call was refused and why, in terms of that call.
    assert_eq!(err.message(), "Revoke: no policy permits this request");
    let own = db_conn
        .revoke(revoke_request(
            "self",
            &db.serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap()
        .into_inner()
        .revocation
        .unwrap();
    assert_eq!(own.seq, 2);
    assert_eq!(next_event(&mut watch).await, own);

    // The CRL lists exactly the two, signed by the issuing CA.
    let (code, der) = server.http_get("/crl").await;
    assert_eq!(code, 200);
    let (rest, crl) = CertificateRevocationList::from_der(&der).unwrap();
    assert!(rest.is_empty());
    let ca_der = x509_parser::pem::parse_x509_pem(server.pki.ca.cert_pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    crl.verify_signature(ca.public_key()).unwrap();
    let mut listed: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| {
            hex::encode(r.raw_serial())
                .trim_start_matches("00")
                .to_owned()
        })
        .collect();
    listed.sort();
    let mut want = vec![web.serial.clone(), db.serial.clone()];
    want.sort();
    assert_eq!(listed, want);

    // A watcher resuming after seq 1 gets exactly seq 2; one ahead of the head is refused.
    let mut resumed = admin
        .watch_revocations(v1::WatchRevocationsRequest { cursor: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut resumed).await, own);
    let err = admin
        .watch_revocations(v1::WatchRevocationsRequest { cursor: 3 })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::OutOfRange, "CURSOR_OUT_OF_RANGE")
    );

    // Once both are past their notAfter (and the skew allowed for clocks behind), the next
    // CRL leaves them out.
    server
        .clock
        .advance(std::time::Duration::from_secs(2 * 24 * 3600));
    let (code, der) = server.http_get("/crl").await;
    assert_eq!(code, 200);
    let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
    crl.verify_signature(ca.public_key()).unwrap();
    assert_eq!(crl.iter_revoked_certificates().count(), 0);
    server.shutdown().await;
}

/// Whether a fresh connection with the workload's certificate fails before any handler runs.
async fn refused_at_handshake(server: &TestServer, workload: &Workload) -> bool {
    let Ok(channel) = server.channel(&workload.chain_pem, &workload.key_pem).await else {
        return true;
    };
    v1::revocation_client::RevocationClient::new(channel)
        .check_status(v1::CheckStatusRequest { serials: vec![] })
        .await
        .is_err()
}

fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

both_backends!(
    an_identity_is_revoked_and_blocked_in_one_step,
    revoke_identity
);
async fn revoke_identity(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let first = enroll(&server, WEB, "web-1").await;
    let second = enroll(&server, WEB, "web-2").await;
    let db = enroll(&server, DB, "db").await;
    let mut admin = server.admin_revocation().await;
    let mut watch = admin
        .watch_revocations(v1::WatchRevocationsRequest { cursor: 0 })
        .await
        .unwrap()
        .into_inner();

    let request = v1::RevokeIdentityRequest {
        request_id: "ri-1".into(),
        spiffe_id: WEB.into(),
        reason: v1::RevocationReason::PrivilegeWithdrawn.into(),
        block: true,
    };
    let done = admin
        .revoke_identity(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(done.blocked);
    let mut serials: Vec<_> = done.revocations.iter().map(|r| r.serial.clone()).collect();
    serials.sort();
    let mut want = vec![first.serial.clone(), second.serial.clone()];
    want.sort();
    assert_eq!(serials, want);
    assert_eq!(
        done.revocations.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    for expected in &done.revocations {
        assert_eq!(&next_event(&mut watch).await, expected);
    }
    // A retry answers the same.
    let again = admin.revoke_identity(request).await.unwrap().into_inner();
    assert_eq!(again, done);

    // The identity cannot be issued again; others can.
    let (csr_pem, _) = csr(WEB, &[]);
    let err = server
        .node()
        .await
        .enroll(enroll_request("web-3", &csr_pem))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.reason.as_str()),
        (Code::PermissionDenied, "IDENTITY_BLOCKED")
    );
    let status = admin
        .check_status(v1::CheckStatusRequest {
            serials: vec![db.serial.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.statuses[0].status(), v1::CertificateStatus::Good);

    // Only operators revoke identities.
    let mut node = server
        .revocation_as(&server.pki.node.cert_pem, &server.pki.node.key_pem)
        .await;
    let err = node
        .revoke_identity(v1::RevokeIdentityRequest {
            request_id: "n".into(),
            spiffe_id: DB.into(),
            reason: 0,
            block: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "POLICY_DENIED")
    );

    // Lifting the block takes two people: alice proposes, bob approves; until then the
    // identity stays blocked.
    let mut alice = server
        .revocation_as(&server.pki.alice.cert_pem, &server.pki.alice.key_pem)
        .await;
    let unblock = |id: &str| v1::UnblockIdentityRequest {
        request_id: id.into(),
        spiffe_id: WEB.into(),
    };
    let proposal = alice
        .unblock_identity(unblock("u-1"))
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap();
    assert_eq!(proposal.kind(), v1::ProposalKind::Unblock);
    assert_eq!(proposal.state(), v1::ProposalState::Open);
    assert_eq!(proposal.subject, WEB);
    let again = alice.unblock_identity(unblock("u-1")).await.unwrap();
    assert_eq!(
        again.into_inner().proposal.unwrap().id,
        proposal.id,
        "a retry answers the same"
    );
    let err = server
        .node()
        .await
        .enroll(enroll_request("web-blocked-still", &csr_pem))
        .await
        .unwrap_err();
    assert_eq!(err.reason, "IDENTITY_BLOCKED", "blocked until approved");
    let approve = v1::ApproveProposalRequest {
        proposal_id: proposal.id.clone(),
    };
    let err = server
        .admin_as("alice")
        .await
        .approve_proposal(approve.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "SELF_APPROVAL");
    let applied = server
        .admin_as("bob")
        .await
        .approve_proposal(approve)
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap();
    assert_eq!(applied.state(), v1::ProposalState::Applied);
    assert_eq!(applied.approved_by, mintgate_tests::BOB_ID);
    // An identity that is not blocked needs no proposal.
    let err = alice.unblock_identity(unblock("u-2")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "IDENTITY_NOT_BLOCKED")
    );
    enroll(&server, WEB, "web-4").await;
    server.shutdown().await;
}
