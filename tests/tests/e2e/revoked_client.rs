//! What a client holding a revoked certificate sees, and how soon. Under TLS 1.3 the client's
//! side of the handshake is done before the server judges its certificate, so the refusal is the
//! `certificate_revoked` alert the server sends next, after which it closes the connection. Our
//! SDK waits for that verdict and names it; tonic's own client fails its first call; a raw TLS
//! client reads the alert and the end of the connection. All of it within a second, counted in
//! `mintgate_grpc_handshake_failures_total{reason="certificate_revoked"}` and logged with the
//! serial.

use std::time::{Duration, Instant};

use mintgate_sdk::v1;
use mintgate_tests::raw::tls_connect;
use mintgate_tests::{Backend, TestServer, both_backends, logs};
use tokio::io::AsyncReadExt;
use tonic::Code;

use crate::metrics::Scrape;
use crate::revocation::{enroll, revoke_request};

const WEB: &str = "spiffe://dev.mintgate.local/workload/web";
const HANDSHAKE_FAILURES: &str = "mintgate_grpc_handshake_failures_total";
/// How soon a refused client must know.
const PROMPTLY: Duration = Duration::from_secs(1);
/// How long a test waits before calling it a hang.
const HANG: Duration = Duration::from_secs(10);

both_backends!(
    a_revoked_client_is_refused_within_a_second_counted_and_logged,
    revoked_client
);
async fn revoked_client(backend: Backend) {
    let logs = logs::capture();
    let server = TestServer::spawn(backend).await;
    let web = enroll(&server, WEB, "revoked-client").await;
    server
        .admin_revocation()
        .await
        .revoke(revoke_request(
            "revoke-client",
            &web.serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();

    // Our SDK: `connect` fails with the reason, and says not to retry.
    let started = Instant::now();
    let err = tokio::time::timeout(HANG, server.client_with(&web.chain_pem, &web.key_pem))
        .await
        .expect("the SDK hangs")
        .expect_err("a revoked certificate connected");
    let elapsed = started.elapsed();
    assert!(elapsed < PROMPTLY, "the SDK took {elapsed:?}");
    assert_eq!(
        (err.code, err.reason.as_str()),
        (Code::Unauthenticated, "CERTIFICATE_REVOKED"),
        "{err}"
    );
    assert!(err.message.contains("CertificateRevoked"), "{err}");
    assert!(!err.is_retryable());

    // tonic's own client: the channel may connect, but its first call fails.
    let started = Instant::now();
    let outcome = tokio::time::timeout(HANG, async {
        let channel = server.channel(&web.chain_pem, &web.key_pem).await?;
        v1::revocation_client::RevocationClient::new(channel)
            .check_status(v1::CheckStatusRequest { serials: vec![] })
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from)
    })
    .await
    .expect("tonic's client hangs");
    let elapsed = started.elapsed();
    assert!(outcome.is_err(), "a revoked certificate completed a call");
    assert!(elapsed < PROMPTLY, "tonic's client took {elapsed:?}");

    // A raw TLS client: its handshake completes, the next read is the alert, then the server
    // has closed the connection.
    let started = Instant::now();
    let mut tls = tls_connect(
        server.grpc_addr,
        &server.pki.ca.cert_pem,
        &web.chain_pem,
        &web.key_pem,
    )
    .await
    .expect("the client's side of a TLS 1.3 handshake completes");
    let mut buf = [0; 64];
    let alert = tokio::time::timeout(HANG, tls.read(&mut buf))
        .await
        .expect("no verdict from the server")
        .expect_err("the server sent data to a revoked client");
    assert!(
        alert.to_string().contains("CertificateRevoked"),
        "{alert:?}"
    );
    let (tcp, _) = tls.into_inner();
    let mut tcp = tcp;
    let end = tokio::time::timeout(HANG, tcp.read(&mut buf))
        .await
        .expect("the server left the connection open after its alert");
    assert!(
        matches!(end, Ok(0) | Err(_)),
        "after the alert: {end:?} ({:?})",
        &buf[..end.as_ref().map_or(0, |n| *n)]
    );
    let elapsed = started.elapsed();
    assert!(elapsed < PROMPTLY, "the raw client took {elapsed:?}");

    // Each refusal is counted under its reason, and logged with the serial and the peer. The
    // server counts a refusal once its side of the handshake has ended, which a client that
    // gave up at the alert need not wait for: wait (bounded) for all three.
    let deadline = Instant::now() + HANG;
    let (scrape, logged) = loop {
        let scrape = Scrape::take(&server).await;
        let revoked = scrape.value(HANDSHAKE_FAILURES, &[("reason", "certificate_revoked")]);
        let logged: Vec<_> = logs
            .events()
            .into_iter()
            .filter(|e| e.field("serial") == Some(web.serial.as_str()))
            .collect();
        if revoked >= 3.0 && logged.len() >= 3 {
            break (scrape, logged);
        }
        assert!(
            Instant::now() < deadline,
            "{revoked} refusals counted, {} logged: {logged:?}",
            logged.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(scrape.value(HANDSHAKE_FAILURES, &[("reason", "tls")]), 0.0);
    for event in &logged {
        assert_eq!(
            event.field("reason"),
            Some("certificate_revoked"),
            "{event:?}"
        );
        assert_eq!(event.field("spiffe_id"), Some(WEB), "{event:?}");
        let remote = event.span("handshake").and_then(|s| s.get("remote"));
        assert!(
            remote.is_some_and(|r| r.starts_with("127.0.0.1:")),
            "{event:?}"
        );
    }
    server.shutdown().await;
}
