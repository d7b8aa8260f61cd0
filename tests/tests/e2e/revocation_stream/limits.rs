//! What bounds the feed's resources: a subscriber that stops reading is cut loose instead of
//! holding others back, one identity holds a limited number of streams, and expired entries
//! leave the log (old cursors get a snapshot instead).

use std::time::{Duration, Instant};

use mintgate_api::HubConfig;
use mintgate_domain::store::{CertificateStore, LogBounds};
use mintgate_sdk::v1;
use mintgate_sdk::v1::watch_revocations_response::Message;
use mintgate_tests::{Backend, TestServer, both_backends};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::{
    Client, WAIT, Watch, enroll, heartbeat_every, hub, next, next_event, only_heartbeats, reason,
    report, revoke, status, through, watch,
};

/// The operator's Revocation client on a connection whose HTTP/2 receive windows are tiny, so
/// that an unread stream backs up into the server's per-subscriber buffer after a few messages
/// instead of after the default 64 KiB windows and the server's write buffers.
async fn narrow_admin(server: &TestServer) -> Client {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&server.pki.ca.cert_pem))
        .identity(Identity::from_pem(
            &server.pki.admin.cert_pem,
            &server.pki.admin.key_pem,
        ))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(server.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .initial_stream_window_size(1024)
        .initial_connection_window_size(1024)
        .connect()
        .await
        .unwrap();
    Client::new(channel)
}

both_backends!(
    a_subscriber_that_stops_reading_is_cut_loose_and_resumes,
    slow_subscriber
);
async fn slow_subscriber(backend: Backend) {
    const N: usize = 40;
    // Heartbeats would fill the unread buffer too; here only revocations do.
    let config = HubConfig {
        subscriber_buffer: 2,
        ..heartbeat_every(60_000)
    };
    let server = TestServer::spawn_with(hub(config, backend)).await;
    let certs = enroll(&server, "s", N, None).await;
    let admin = server.admin_revocation().await;
    let narrow = narrow_admin(&server).await;
    let mut slow = watch(&narrow, 0).await.unwrap();
    let mut reader = watch(&admin, 0).await.unwrap();

    // The reader gets every revocation as it commits while the slow one reads nothing.
    let (mut calls, mut delivery, mut after_answer) = (Vec::new(), Vec::new(), Vec::new());
    let mut committed = Vec::new();
    for cert in &certs {
        let start = Instant::now();
        let answer = revoke(&admin, &format!("s-{}", cert.serial), &cert.serial)
            .await
            .unwrap();
        let answered = Instant::now();
        assert_eq!(next_event(&mut reader).await, answer);
        calls.push(answered - start);
        delivery.push(start.elapsed());
        after_answer.push(answered.elapsed());
        committed.push(answer);
    }
    report("sequential: Revoke call", calls);
    report("sequential: Revoke asked -> event at watcher", delivery);
    report(
        "sequential: Revoke answered -> event at watcher",
        after_answer,
    );

    // The slow one finds what was in flight, in order, then RESOURCE_EXHAUSTED.
    let mut got = Vec::new();
    let err = loop {
        match tokio::time::timeout(WAIT, slow.message())
            .await
            .expect("an answer in time")
        {
            Ok(Some(m)) => match m.message.unwrap() {
                Message::Event(e) => got.push(e),
                Message::Heartbeat(h) => assert_eq!(h.head_seq, got.last().map_or(0, |e| e.seq)),
                Message::Snapshot(s) => panic!("unexpected snapshot {s:?}"),
            },
            Ok(None) => panic!(
                "the slow stream ended without a reason after {} events",
                got.len()
            ),
            Err(status) => break status,
        }
    };
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::ResourceExhausted, "SUBSCRIBER_TOO_SLOW")
    );
    assert!(got.len() < N, "cut after {} events", got.len());
    assert_eq!(got[..], committed[..got.len()]);
    eprintln!("slow subscriber: cut after {} of {N} events", got.len());

    // It resumes from its cursor on the same narrow connection and gets exactly the rest.
    let cursor = got.last().map_or(0, |e| e.seq);
    let mut resumed = watch(&narrow, cursor).await.unwrap();
    got.extend(through(&mut resumed, cursor, N as i64).await);
    assert_eq!(got, committed);
    server.shutdown().await;
}

both_backends!(one_identity_holds_at_most_its_stream_cap, stream_cap);
async fn stream_cap(backend: Backend) {
    let config = HubConfig {
        max_streams_per_identity: 2,
        ..heartbeat_every(50)
    };
    let server = TestServer::spawn_with(hub(config, backend)).await;
    let certs = enroll(&server, "cap", 2, None).await;
    let admin = server.admin_revocation().await;
    let refused = |result: Result<Watch, Status>| match result {
        Err(e) => assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::ResourceExhausted, "TOO_MANY_STREAMS")
        ),
        Ok(_) => panic!("a stream past the cap was accepted"),
    };
    let first = watch(&admin, 0).await.unwrap();
    let mut second = watch(&admin, 0).await.unwrap();
    refused(watch(&admin, 0).await);
    // The cap is per identity, not per connection; other identities are not affected.
    refused(watch(&server.admin_revocation().await, 0).await);
    let other = server
        .revocation_as(&certs[0].chain_pem, &certs[0].key_pem)
        .await;
    let mut others = watch(&other, 0).await.unwrap();

    // Once the server notices a stream is gone its slot is free again, and only that one.
    drop(first);
    let deadline = Instant::now() + WAIT;
    let mut third = loop {
        match watch(&admin, 0).await {
            Ok(w) => break w,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the freed slot never came back: {e:?}"),
        }
    };
    refused(watch(&admin, 0).await);
    let event = revoke(&admin, "cap-1", &certs[1].serial).await.unwrap();
    for w in [&mut second, &mut third, &mut others] {
        assert_eq!(next_event(w).await, event);
    }
    server.shutdown().await;
}

both_backends!(
    expired_entries_leave_the_log_and_old_cursors_get_a_snapshot,
    retention
);
async fn retention(backend: Backend) {
    let config = HubConfig {
        poll_interval: Duration::from_millis(20),
        prune_interval: Duration::ZERO,
        ..heartbeat_every(50)
    };
    let server = TestServer::spawn_with(hub(config, backend)).await;
    let short = enroll(&server, "short", 1, Some(120)).await.remove(0);
    let long = enroll(&server, "long", 3, None).await;
    let admin = server.admin_revocation().await;
    let first = revoke(&admin, "t-0", &short.serial).await.unwrap();
    let second = revoke(&admin, "t-1", &long[0].serial).await.unwrap();
    assert_eq!(
        crl_serials(&server).await,
        sorted([&short.serial, &long[0].serial])
    );

    // Past notAfter but within the skew allowance the entry stays: a peer whose clock is
    // behind still accepts the certificate.
    let not_after = first.not_after.unwrap().seconds;
    let now = || server.clock.now_odt().unix_timestamp();
    server
        .clock
        .advance(Duration::from_secs((not_after - now() + 60) as u64));
    let third = revoke(&admin, "t-2", &long[1].serial).await.unwrap();
    assert_eq!(
        crl_serials(&server).await,
        sorted([&short.serial, &long[0].serial, &long[1].serial])
    );
    let (statuses, _) = status(&admin, &[&short.serial]).await;
    assert_eq!(statuses, [v1::CertificateStatus::Revoked]);

    // Past the allowance the server prunes it on its own.
    server.clock.advance(Duration::from_secs(301));
    let bounds = || async { server.store().revocation_bounds().await.unwrap() };
    let deadline = Instant::now() + WAIT;
    while bounds().await.pruned_through == 0 {
        assert!(
            Instant::now() < deadline,
            "the expired entry is never pruned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let floor = LogBounds {
        pruned_through: 1,
        head: 3,
    };
    assert_eq!(bounds().await, floor);
    let (statuses, head) = status(&admin, &[&short.serial, &long[0].serial]).await;
    assert_eq!(
        statuses,
        [
            v1::CertificateStatus::Expired,
            v1::CertificateStatus::Revoked
        ]
    );
    assert_eq!(head, 3);

    // A cursor older than the log: the snapshot of live entries, then the live feed, with
    // heartbeats that carry the last sent sequence number and the server's clock.
    let mut old = watch(&admin, 0).await.unwrap();
    match next(&mut old).await {
        Message::Snapshot(s) => {
            assert_eq!(s.entries, [second.clone(), third.clone()]);
            assert_eq!(s.as_of_seq, 3);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    let clock_now = prost_types::Timestamp {
        seconds: now(),
        nanos: 0,
    };
    let beat = |h: v1::Heartbeat| (h.head_seq, h.server_time.unwrap());
    match next(&mut old).await {
        Message::Heartbeat(h) => assert_eq!(beat(h), (3, clock_now)),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    // A cursor at the floor replays what is left, without a snapshot.
    let mut at_floor = watch(&admin, 1).await.unwrap();
    assert_eq!(
        through(&mut at_floor, 1, 3).await,
        [second.clone(), third.clone()]
    );

    let fourth = revoke(&admin, "t-3", &long[2].serial).await.unwrap();
    assert_eq!(through(&mut old, 3, 4).await, [fourth]);
    let beats = only_heartbeats(&mut old, Duration::from_millis(200)).await;
    assert!(!beats.is_empty());
    assert!(beats.into_iter().all(|h| beat(h) == (4, clock_now)));
    assert_eq!(
        crl_serials(&server).await,
        sorted([&long[0].serial, &long[1].serial, &long[2].serial])
    );
    server.shutdown().await;
}

/// The serials on the CRL, checked against the issuing CA's signature.
async fn crl_serials(server: &TestServer) -> Vec<String> {
    let (code, der) = server.http_get("/crl").await;
    assert_eq!(code, 200);
    let (rest, crl) = CertificateRevocationList::from_der(&der).unwrap();
    assert!(rest.is_empty());
    let ca_der = x509_parser::pem::parse_x509_pem(server.pki.ca.cert_pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&ca_der).unwrap();
    crl.verify_signature(ca.public_key()).unwrap();
    let listed = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()));
    sorted(listed)
}

fn sorted<S: ToString>(serials: impl IntoIterator<Item = S>) -> Vec<String> {
    let mut out: Vec<String> = serials.into_iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}
