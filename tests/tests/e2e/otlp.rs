//! OTLP trace export, opt-in: `mintgate serve --otlp-endpoint` sends each RPC's span, with its
//! request id, caller and committed transitions, to a collector — here a fake one in the test.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mintgate_sdk::{Client, TlsMaterial, v1};
use mintgate_tests::ADMIN_ID;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::mpsc;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

struct FakeCollector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for FakeCollector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_when_configured() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let collector = incoming.local_addr().unwrap();
    let (tx, mut exported) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(FakeCollector(tx)))
            .serve_with_incoming(incoming),
    );

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(mintgate_tests::mintgate_bin())
        .args(["serve", "--dev", "--grpc-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .args(["--otlp-endpoint", &format!("http://{collector}")])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The tour names the gRPC address once the server listens.
    let stdout = child.stdout.take().unwrap();
    let grpc = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.trim()
                    .strip_suffix(" list")
                    .and_then(|l| l.rsplit(' ').next())
                    .map(str::to_owned)
            })
    });
    let grpc = tokio::time::timeout(Duration::from_secs(60), grpc)
        .await
        .expect("the server starts within 60 s")
        .unwrap()
        .expect("the tour names the gRPC address");

    let certs = dir.path().join("certs-dev");
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let tls = TlsMaterial {
        ca_pem: read("ca.pem"),
        cert_pem: read("admin.pem"),
        key_pem: read("admin.key"),
    };
    let admin = Client::connect(&format!("https://{grpc}"), "localhost", &tls)
        .await
        .unwrap();
    admin
        .create_join_token(v1::CreateJoinTokenRequest {
            request_id: "otlp-1".into(),
            spiffe_id: "spiffe://dev.mintgate.local/joined/otlp".into(),
            ttl: None,
        })
        .await
        .unwrap();
    drop(admin);

    // SIGTERM: the server drains and flushes its spans before exiting.
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");

    let mut spans = Vec::new();
    while let Ok(request) = exported.try_recv() {
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    let call = spans
        .iter()
        .find(|s| s.name == "CreateJoinToken")
        .unwrap_or_else(|| panic!("no CreateJoinToken span among {spans:#?}"));
    assert_eq!(attribute(call, "request_id"), Some("otlp-1"));
    assert_eq!(attribute(call, "caller"), Some(ADMIN_ID));
    assert!(
        call.events.iter().any(|e| e.name == "committed"),
        "the committed audit event is on the span: {call:#?}"
    );
}
