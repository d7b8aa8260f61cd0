//! What a client that breaks the wire rules gets back: every refusal made before a handler runs
//! (a message over the 64 KiB cap, bytes that are not protobuf, an unknown method or service, a
//! compression the server does not speak) carries `ErrorInfo` with domain `mintgate`, a stable
//! reason and `fault=user`, just as a refusal by a handler does, and is counted under that reason
//! as a user fault.

use std::collections::HashMap;

use mintgate_sdk::v1;
use mintgate_tests::raw::{RawAnswer, RawGrpc};
use mintgate_tests::{Backend, TestServer};
use prost::Message as _;
use tonic::Code;
use tonic_types::StatusExt;

use crate::metrics::{OUTCOMES, Scrape};

const ENROLL: &str = "/mintgate.v1.Provisioning/Enroll";
const WATCH: &str = "/mintgate.v1.Revocation/WatchRevocations";

/// The ErrorInfo of a refusal: its reason and metadata; panics unless it is ours and a user
/// fault, with a message that names the RPC.
fn refusal(status: &tonic::Status, rpc: &str) -> (String, HashMap<String, String>) {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "mintgate", "{status:?}");
    assert_eq!(
        info.metadata.get("fault").map(String::as_str),
        Some("user"),
        "{status:?}"
    );
    assert!(
        status.message().starts_with(&format!("{rpc}: ")),
        "{status:?}"
    );
    (info.reason, info.metadata)
}

/// A refusal answered before any message, as tonic answers a call it refuses up front.
fn trailers_only(answer: &RawAnswer) -> tonic::Status {
    assert!(answer.trailers.is_none(), "{answer:?}");
    assert!(answer.body.is_empty(), "{answer:?}");
    answer.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_before_a_handler_carries_error_info_and_is_counted() {
    let server = TestServer::spawn(Backend::Sqlite).await;

    // A 70 KB CSR, through the generated client: over the decode cap, so no handler sees it.
    let status = server
        .node_provisioning()
        .await
        .enroll(v1::EnrollRequest {
            request_id: "too-large-1".into(),
            csr: vec![b'A'; 70_000],
            ttl: None,
            join_token: String::new(),
            service_account_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let (reason, metadata) = refusal(&status, "Enroll");
    assert_eq!(reason, "MESSAGE_TOO_LARGE");
    assert_eq!(metadata["limit_bytes"], "65536");
    let size: usize = metadata["size_bytes"].parse().unwrap();
    assert!(size > 70_000, "{metadata:?}");

    let mut raw = RawGrpc::node(&server).await;

    // Bytes that are not an EnrollRequest (field 1 with wire type 7), and a message cut short.
    let status = trailers_only(&raw.call(ENROLL, &[], b"\x0f\x00").await);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(refusal(&status, "Enroll").0, "MESSAGE_MALFORMED");
    let cut_short = tonic::codegen::Bytes::from_static(b"\x00\x00\x00\x00\x64\x0a\x01");
    let status = trailers_only(&raw.call_body(ENROLL, &[], cut_short).await);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(refusal(&status, "Enroll").0, "MESSAGE_MALFORMED");

    // The same for the streaming RPC: refused before the stream starts.
    let status = trailers_only(&raw.call(WATCH, &[], b"\x0f\x00").await);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(refusal(&status, "WatchRevocations").0, "MESSAGE_MALFORMED");

    // An unknown method of a known service, and an unknown service.
    for path in [
        "/mintgate.v1.Provisioning/Enrol",
        "/mintgate.v2.Provisioning/Enroll",
    ] {
        let status = trailers_only(&raw.call(path, &[], b"").await);
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
        let rpc = path.rsplit('/').next().unwrap();
        let (reason, metadata) = refusal(&status, rpc);
        assert_eq!(reason, "METHOD_UNKNOWN", "{path}");
        assert_eq!(metadata["path"], path);
    }

    // A compressed request: the server accepts none, and says which it would.
    let request = v1::GetRequestRequest {
        request_id: "gz".into(),
    };
    let answer = raw
        .call(
            "/mintgate.v1.Provisioning/GetRequest",
            &[("grpc-encoding", "gzip")],
            &request.encode_to_vec(),
        )
        .await;
    let status = trailers_only(&answer);
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(refusal(&status, "GetRequest").0, "COMPRESSION_UNSUPPORTED");
    assert_eq!(answer.headers["grpc-accept-encoding"], "identity");

    // Every one is counted under its reason as a user fault; none as the server's.
    let scrape = Scrape::take(&server).await;
    for (rpc, reason, count) in [
        ("Enroll", "MESSAGE_TOO_LARGE", 1.0),
        ("Enroll", "MESSAGE_MALFORMED", 2.0),
        ("WatchRevocations", "MESSAGE_MALFORMED", 1.0),
        ("other", "METHOD_UNKNOWN", 2.0),
        ("GetRequest", "COMPRESSION_UNSUPPORTED", 1.0),
    ] {
        let labels = [("rpc", rpc), ("class", "user"), ("reason", reason)];
        assert_eq!(scrape.value(OUTCOMES, &labels), count, "{labels:?}");
    }
    assert_eq!(scrape.value(OUTCOMES, &[("class", "system")]), 0.0);
    assert_eq!(scrape.value(OUTCOMES, &[("class", "user")]), 7.0);

    // Nothing was recorded: no request id could be read from any of them.
    assert!(server.stored_rows().await.requests.is_empty());
    server.shutdown().await;
}
