//! What an operator observes: `/metrics` moves with real traffic (an issuance, a refusal, a
//! revocation reaching a watcher), and each RPC's span carries its request id, its caller and
//! the lifecycle transitions it committed.

use std::collections::BTreeMap;
use std::time::Duration;

use mintgate_sdk::v1;
use mintgate_sdk::v1::watch_revocations_response::Message;
use mintgate_tests::csr::csr;
use mintgate_tests::{Backend, NODE_ID, TestServer, both_backends, logs};
use tonic::Streaming;
use x509_parser::pem::parse_x509_pem;

use crate::issuance::enroll_request;
use crate::revocation::{enroll, revoke_request};

const WEB: &str = "spiffe://dev.mintgate.local/workload/web";
const NOT_GRANTED: &str = "spiffe://dev.mintgate.local/payments/api";
pub const OUTCOMES: &str = "mintgate_rpc_outcomes_total";

/// One scrape of `/metrics`.
pub struct Scrape {
    text: String,
    series: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    pub async fn take(server: &TestServer) -> Self {
        let (status, body) = server.http_get("/metrics").await;
        assert_eq!(status, 200);
        Self::parse(String::from_utf8(body).unwrap())
    }

    /// Reads Prometheus text format.
    pub fn parse(text: String) -> Self {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
                let labels = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once('=').unwrap();
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels, value.parse().unwrap())
            })
            .collect();
        Self { text, series }
    }

    /// The sum of the series called `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

/// The next revocation event on a watch stream, skipping heartbeats.
async fn next_event(stream: &mut Streaming<v1::WatchRevocationsResponse>) -> v1::RevocationEvent {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("the stream is open")
            .message
            .unwrap();
        if let Message::Event(e) = message {
            return e;
        }
    }
}

both_backends!(
    metrics_follow_issuance_refusals_and_revocations,
    metrics_move
);
async fn metrics_move(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let before = Scrape::take(&server).await;
    assert_eq!(before.value("mintgate_revocation_subscribers", &[]), 0.0);

    // A watcher, then an issuance, a refusal and the revocation of what was issued.
    let mut admin = server.admin_revocation().await;
    let mut watch = admin
        .watch_revocations(v1::WatchRevocationsRequest { cursor: 0 })
        .await
        .unwrap()
        .into_inner();
    let web = enroll(&server, WEB, "metrics-enroll").await;
    let (denied, _) = csr(NOT_GRANTED, &[]);
    let err = server
        .node()
        .await
        .enroll(enroll_request("metrics-refused", &denied))
        .await
        .unwrap_err();
    assert_eq!(err.reason, "POLICY_DENIED");
    admin
        .revoke(revoke_request(
            "metrics-revoke",
            &web.serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();
    assert_eq!(next_event(&mut watch).await.serial, web.serial);

    let after = Scrape::take(&server).await;
    assert!(
        after
            .text
            .contains("# TYPE mintgate_issuance_duration_seconds histogram"),
        "latencies are Prometheus histograms:\n{}",
        after.text
    );
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let enroll_ok = [("rpc", "Enroll"), ("class", "ok"), ("reason", "OK")];
    assert_eq!(delta(OUTCOMES, &enroll_ok), 1.0);
    let refused = [
        ("rpc", "Enroll"),
        ("class", "user"),
        ("reason", "POLICY_DENIED"),
    ];
    assert_eq!(delta(OUTCOMES, &refused), 1.0);
    assert_eq!(delta(OUTCOMES, &[("class", "system")]), 0.0);
    assert_eq!(delta(OUTCOMES, &[("rpc", "Revoke"), ("class", "ok")]), 1.0);
    let enroll = [("rpc", "Enroll")];
    assert_eq!(delta("mintgate_rpc_duration_seconds_count", &enroll), 2.0);
    // Only the call that returned a certificate is an issuance.
    assert_eq!(
        delta("mintgate_issuance_duration_seconds_count", &enroll),
        1.0
    );
    for (state, n) in [("APPROVED", 1.0), ("ISSUED", 1.0), ("DENIED", 1.0)] {
        let moved = delta("mintgate_requests_total", &[("state", state)]);
        assert_eq!(moved, n, "{state}");
    }
    assert_eq!(delta("mintgate_revocations_total", &[]), 1.0);
    assert_eq!(after.value("mintgate_revocation_subscribers", &[]), 1.0);
    assert_eq!(
        delta("mintgate_revocation_propagation_seconds_count", &[]),
        1.0
    );
    // Approval, issuance, refusal, revocation: four commits of one request each.
    assert_eq!(delta("mintgate_db_commit_batch_size_count", &[]), 4.0);
    assert_eq!(delta("mintgate_db_commit_batch_size_sum", &[]), 4.0);

    // The watcher leaves.
    drop(watch);
    drop(admin);
    let mut subscribers = 1.0;
    for _ in 0..100 {
        subscribers = Scrape::take(&server)
            .await
            .value("mintgate_revocation_subscribers", &[]);
        if subscribers == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(subscribers, 0.0);

    // CA expiry follows the injected clock.
    let (_, pem) = parse_x509_pem(server.pki.ca.cert_pem.as_bytes()).unwrap();
    let ca_not_after = pem.parse_x509().unwrap().validity().not_after.timestamp();
    let expected = (ca_not_after - server.clock.now_odt().unix_timestamp()) as f64;
    let ca_expiry = Scrape::take(&server)
        .await
        .value("mintgate_ca_expiry_seconds", &[]);
    assert_eq!(ca_expiry, expected);

    // A join token is outstanding until its 10 minutes are up.
    server
        .admin()
        .await
        .create_join_token(v1::CreateJoinTokenRequest {
            request_id: "metrics-token".into(),
            spiffe_id: "spiffe://dev.mintgate.local/joined/metrics".into(),
            ttl: None,
        })
        .await
        .unwrap();
    let tokens = |s: &Scrape| s.value("mintgate_join_tokens_outstanding", &[]);
    assert_eq!(tokens(&Scrape::take(&server).await), 1.0);
    server.clock.advance(Duration::from_secs(11 * 60));
    let later = Scrape::take(&server).await;
    assert_eq!(tokens(&later), 0.0);
    assert_eq!(
        later.value("mintgate_ca_expiry_seconds", &[]),
        expected - 660.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_carry_the_request_id_the_caller_and_each_transition() {
    let logs = logs::capture();
    let server = TestServer::spawn(Backend::Sqlite).await;
    enroll(&server, WEB, "spans-enroll").await;
    let (denied, _) = csr(NOT_GRANTED, &[]);
    server
        .node()
        .await
        .enroll(enroll_request("spans-refused", &denied))
        .await
        .unwrap_err();

    let of = |request_id: &str| -> Vec<logs::Logged> {
        logs.events()
            .into_iter()
            .filter(|e| {
                e.span("Enroll")
                    .is_some_and(|s| s.get("request_id").map(String::as_str) == Some(request_id))
            })
            .collect()
    };
    let transitions = |events: &[logs::Logged]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.field("message") == Some("committed"))
            .map(|e| e.field("detail").unwrap().to_owned())
            .collect()
    };

    let issued = of("spans-enroll");
    assert!(!issued.is_empty());
    for e in &issued {
        assert_eq!(e.span("Enroll").unwrap()["caller"], NODE_ID, "{e:?}");
    }
    let steps = transitions(&issued);
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(
        steps[0].starts_with("ENROLL RECEIVED->VERIFIED->APPROVED"),
        "{steps:?}"
    );
    assert_eq!(steps[1], "APPROVED->ISSUED");

    let refused = of("spans-refused");
    let steps = transitions(&refused);
    // The refusal names the risk the policy saw (here a first issuance from this node).
    assert_eq!(
        steps,
        ["ENROLL RECEIVED->DENIED POLICY_DENIED, risk 20 (low): first_issuance,first_from_node"]
    );
    assert!(
        refused
            .iter()
            .any(|e| e.field("reason") == Some("POLICY_DENIED")),
        "the refusal is logged with its reason: {refused:?}"
    );
    server.shutdown().await;
}
