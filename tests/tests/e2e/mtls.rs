//! mTLS only: a connection without a client certificate, with one from an unknown CA, an expired
//! one, or one from another trust domain fails at the handshake; the handler never runs.

use std::time::Duration;

use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::{Backend, TestServer, both_backends};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use time::OffsetDateTime;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::issuance::{WORKLOAD, enroll_request};

/// A client certificate for `uri`, signed by `ca` (cert, key PEM), valid over `validity`.
fn client_cert(
    ca: Option<(&str, &str)>,
    uri: &str,
    validity: (OffsetDateTime, OffsetDateTime),
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    (params.not_before, params.not_after) = validity;
    let cert = match ca {
        Some((cert_pem, key_pem)) => {
            let issuer =
                Issuer::from_ca_cert_pem(cert_pem, KeyPair::from_pem(key_pem).unwrap()).unwrap();
            params.signed_by(&key, &issuer).unwrap()
        }
        None => params.self_signed(&key).unwrap(),
    };
    (cert.pem(), key.serialize_pem())
}

/// The call must fail below gRPC (no status from a handler), and leave nothing behind.
async fn assert_refused(server: &TestServer, identity: Option<(&str, &str)>, what: &str) {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&server.pki.ca.cert_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(server.url())
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let outcome = match endpoint.connect().await {
        Err(_) => None,
        Ok(channel) => {
            let client = mintgate_sdk::Client::from_channel(channel);
            Some(client.get_request("probe").await)
        }
    };
    if let Some(result) = outcome {
        let err = result.expect_err(what);
        assert!(
            matches!(
                err.code,
                // TLS 1.3: the client's handshake completes before the server judges its
                // certificate, so the refusal surfaces on the first call as a broken connection.
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            ),
            "{what}: expected a transport failure, got {err}"
        );
        assert_ne!(err.reason, "NOT_FOUND", "{what}: the handler ran");
    }
}

both_backends!(
    only_verified_client_certificates_complete_the_handshake,
    handshake_refusals
);
async fn handshake_refusals(backend: Backend) {
    let logs = mintgate_tests::logs::capture();
    let server = TestServer::spawn(backend).await;
    let now = server.clock.now_odt();
    let day = time::Duration::days(1);
    let bootstrap = (
        server.pki.bootstrap_ca.cert_pem.as_str(),
        server.pki.bootstrap_ca.key_pem.as_str(),
    );
    let node_uri = "spiffe://dev.mintgate.local/node/n2";

    assert_refused(&server, None, "no client certificate").await;

    let (c, k) = client_cert(None, node_uri, (now - day, now + day));
    assert_refused(&server, Some((&c, &k)), "unknown CA").await;

    let (c, k) = client_cert(Some(bootstrap), node_uri, (now - day * 2, now - day));
    assert_refused(&server, Some((&c, &k)), "expired").await;

    let (c, k) = client_cert(
        Some(bootstrap),
        "spiffe://other.example/node/n2",
        (now - day, now + day),
    );
    assert_refused(&server, Some((&c, &k)), "other trust domain").await;
    // The server's log names both trust domains (the client sees only a TLS alert). The
    // verdict may be logged just after the client gave up: wait for it, within a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let logged = loop {
        let found = logs
            .events()
            .into_iter()
            .find(|e| e.field("spiffe_id") == Some("spiffe://other.example/node/n2"));
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal was not logged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(logged.field("reason"), Some("trust_domain_mismatch"));
    let message = logged.field("message").unwrap();
    assert!(
        message.contains("other.example") && message.contains("dev.mintgate.local"),
        "{message}"
    );

    // The same CA with a good certificate works: the refusals above were about the certificate.
    let (c, k) = client_cert(Some(bootstrap), node_uri, (now - day, now + day));
    let client = server.client_with(&c, &k).await.unwrap();
    assert_eq!(
        client.get_request("probe").await.unwrap_err().code,
        tonic::Code::NotFound
    );
    server.shutdown().await;
}

both_backends!(
    an_issued_certificate_stops_working_when_it_expires,
    expiry_by_clock
);
async fn expiry_by_clock(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let (csr_pem, key) = csr(WORKLOAD, &[]);
    let req = mintgate_sdk::v1::EnrollRequest {
        ttl: Some(mintgate_sdk::seconds(120)),
        ..enroll_request("short", &csr_pem)
    };
    let issued = server.node().await.enroll(req).await.unwrap();
    let checked = check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        server.clock.now_odt().unix_timestamp(),
    );
    assert!(
        checked.not_after - checked.not_before <= 120 + 60,
        "ttl 120 s, backdate ≤ 60 s"
    );
    let key_pem = key.serialize_pem();
    let workload = server
        .client_with(&issued.certificate_chain_pem, &key_pem)
        .await
        .unwrap();
    assert_eq!(
        workload.get_request("x").await.unwrap_err().code,
        tonic::Code::NotFound
    );

    server.clock.advance(Duration::from_secs(180));
    assert_refused(
        &server,
        Some((&issued.certificate_chain_pem, &key_pem)),
        "expired workload",
    )
    .await;
    server.shutdown().await;
}
