//! A tower layer around the gRPC routes that records every Mintgate call's duration and outcome.
//!
//! The outcome is read back from the response: tonic answers a failed call with a trailers-only
//! response whose headers carry the status and the `ErrorInfo` that [`crate::to_status`]
//! attached, so the reason and fault class counted are exactly what the client was sent. That
//! also covers refusals that never reach a handler (an unidentified peer, an oversized message),
//! and the deadlines, which answer `DEADLINE_EXCEEDED` / `SERVER_TIMEOUT` or `CLIENT_TIMEOUT` from
//! inside this layer (see [`crate::deadline`]). Refusals tonic makes by itself (an oversized or
//! malformed message, an unknown method) get their `ErrorInfo` from [`crate::refusals`], also
//! inside this layer. A call dropped unfinished is counted as `CANCELLED` (user): the client
//! went away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tower::{Layer, Service};

use crate::metrics::{Class, Metrics};

/// The package whose calls are measured under their own name.
const PACKAGE: &str = "/mintgate.v1.";

/// The other services this server runs, which are not measured.
const UNMEASURED: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Mintgate's RPCs: the only values of the `rpc` label (a client cannot mint new series).
const RPCS: [&str; 25] = [
    "Enroll",
    "Renew",
    "GetRequest",
    "CreateJoinToken",
    "ProposePolicy",
    "ProposeRoleBinding",
    "GetProposal",
    "ListProposals",
    "ShadowPolicy",
    "ApproveProposal",
    "GetGovernance",
    "ListPending",
    "Approve",
    "Deny",
    "WatchPending",
    "Revoke",
    "RevokeIdentity",
    "UnblockIdentity",
    "RevokeIssuer",
    "WatchTrustBundle",
    "ProposeCa",
    "ListAuthorities",
    "CheckStatus",
    "WatchRevocations",
    "ExportEvidence",
];

/// See the module documentation.
#[derive(Clone)]
pub(crate) struct RpcMetricsLayer {
    metrics: Metrics,
}

impl RpcMetricsLayer {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<Request<B>> for RpcMetrics<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call = rpc_of(request.uri().path()).map(|rpc| Call {
            rpc,
            started: Instant::now(),
            layer: self.layer.clone(),
            finished: false,
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            if let Some(mut call) = call {
                let (class, reason) = match &response {
                    Ok(r) => outcome(r.headers()),
                    Err(_) => (Class::System, "UNKNOWN".to_owned()),
                };
                call.finish(class, reason);
            }
            response
        })
    }
}

/// One measured call; counted when it finishes or, unfinished, when it is dropped.
struct Call {
    rpc: &'static str,
    started: Instant,
    layer: RpcMetricsLayer,
    finished: bool,
}

impl Call {
    fn finish(&mut self, class: Class, reason: String) {
        self.finished = true;
        self.layer
            .metrics
            .rpc(self.rpc, self.started.elapsed(), class, reason);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.layer
            .metrics
            .rpc(self.rpc, self.started.elapsed(), Class::User, "CANCELLED");
    }
}

/// The `rpc` label of a request path: a Mintgate RPC by name, and `other` for every path no
/// service here answers (an unknown method or service: a client's mistake, counted with reason
/// `METHOD_UNKNOWN`). Health and reflection are not measured.
fn rpc_of(path: &str) -> Option<&'static str> {
    if UNMEASURED.iter().any(|service| path.starts_with(service)) {
        return None;
    }
    let method = path
        .strip_prefix(PACKAGE)
        .and_then(|rest| rest.rsplit('/').next());
    Some(
        RPCS.into_iter()
            .find(|rpc| Some(*rpc) == method)
            .unwrap_or("other"),
    )
}

/// The class and reason of a response: its `ErrorInfo` when it has one, else its code.
fn outcome(headers: &HeaderMap) -> (Class, String) {
    let Some(status) = Status::from_header_map(headers) else {
        return (Class::Ok, "OK".to_owned());
    };
    let (code_reason, code_class) = by_code(status.code());
    match status.get_details_error_info() {
        Some(info) => {
            let class = match info.metadata.get("fault").map(String::as_str) {
                Some("user") => Class::User,
                Some("system") => Class::System,
                _ => code_class,
            };
            (class, info.reason)
        }
        None => (code_class, code_reason.to_owned()),
    }
}

/// A reason and class for statuses without `ErrorInfo` (made by tonic, not by us; the
/// refusals layer gives them one, with the same reason and class).
pub(crate) fn by_code(code: Code) -> (&'static str, Class) {
    match code {
        Code::Ok => ("OK", Class::Ok),
        Code::Cancelled => ("CANCELLED", Class::User),
        Code::Unknown => ("UNKNOWN", Class::System),
        Code::InvalidArgument => ("INVALID_ARGUMENT", Class::User),
        Code::DeadlineExceeded => ("DEADLINE_EXCEEDED", Class::System),
        Code::NotFound => ("NOT_FOUND", Class::User),
        Code::AlreadyExists => ("ALREADY_EXISTS", Class::User),
        Code::PermissionDenied => ("PERMISSION_DENIED", Class::User),
        Code::ResourceExhausted => ("RESOURCE_EXHAUSTED", Class::User),
        Code::FailedPrecondition => ("FAILED_PRECONDITION", Class::User),
        Code::Aborted => ("ABORTED", Class::System),
        Code::OutOfRange => ("OUT_OF_RANGE", Class::User),
        Code::Unimplemented => ("UNIMPLEMENTED", Class::User),
        Code::Internal => ("INTERNAL", Class::System),
        Code::Unavailable => ("UNAVAILABLE", Class::System),
        Code::DataLoss => ("DATA_LOSS", Class::System),
        Code::Unauthenticated => ("UNAUTHENTICATED", Class::User),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use metrics_exporter_prometheus::PrometheusBuilder;
    use tonic_types::ErrorDetails;

    use super::*;

    use crate::test_support::Stuck;

    /// What is counted for an Enroll dropped unfinished.
    fn dropped() -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let layer = RpcMetricsLayer::new(Metrics::new(Arc::new(recorder)));
        let request = Request::builder()
            .uri("/mintgate.v1.Provisioning/Enroll")
            .body(())
            .unwrap();
        drop(layer.layer(Stuck).call(request));
        handle.render()
    }

    /// Every method of Mintgate's services has its own `rpc` label, none is counted as "other".
    #[test]
    fn every_mintgate_rpc_is_a_label() {
        use prost::Message as _;
        let set =
            prost_types::FileDescriptorSet::decode(mintgate_proto::FILE_DESCRIPTOR_SET).unwrap();
        let methods: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package() == "mintgate.v1")
            .flat_map(|f| &f.service)
            .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
            .collect();
        assert_eq!(methods.len(), RPCS.len(), "{methods:?}");
        for method in methods {
            assert!(RPCS.contains(&method.as_str()), "{method} is not in RPCS");
        }
    }

    #[test]
    fn a_call_dropped_unfinished_is_a_cancellation() {
        let cancelled = dropped();
        assert!(
            cancelled.contains(
                "mintgate_rpc_outcomes_total{rpc=\"Enroll\",class=\"user\",reason=\"CANCELLED\"} 1"
            ),
            "{cancelled}"
        );
    }

    #[test]
    fn only_mintgate_rpcs_get_a_label_and_unknown_methods_share_one() {
        assert_eq!(rpc_of("/mintgate.v1.Provisioning/Enroll"), Some("Enroll"));
        assert_eq!(
            rpc_of("/mintgate.v1.Revocation/WatchRevocations"),
            Some("WatchRevocations")
        );
        assert_eq!(rpc_of("/mintgate.v1.Admin/Anything"), Some("other"));
        assert_eq!(rpc_of("/no.such.Service/Enroll"), Some("other"));
        assert_eq!(rpc_of("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            rpc_of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            None
        );
    }

    #[test]
    fn outcomes_come_from_error_info_and_fall_back_to_the_code() {
        assert_eq!(outcome(&HeaderMap::new()), (Class::Ok, "OK".to_owned()));

        let mut metadata = HashMap::new();
        metadata.insert("fault".to_owned(), "user".to_owned());
        let details = ErrorDetails::with_error_info("JOIN_TOKEN_USED", "mintgate", metadata);
        let refused = Status::with_error_details(Code::PermissionDenied, "no", details);
        let (class, reason) = outcome(refused.into_http::<()>().headers());
        assert_eq!((class, reason.as_str()), (Class::User, "JOIN_TOKEN_USED"));

        let bare = Status::unavailable("down");
        let (class, reason) = outcome(bare.into_http::<()>().headers());
        assert_eq!((class, reason.as_str()), (Class::System, "UNAVAILABLE"));
    }
}
