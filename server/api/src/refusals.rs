//! A tower layer that gives every error status tonic makes on our behalf — before a handler runs,
//! or for a path no handler serves — the `ErrorInfo` our own errors carry (domain `mintgate`, a
//! stable reason, `fault`), so a client can tell what it did wrong and the RPC metrics layer
//! outside this one counts it under that reason.
//!
//! What tonic refuses by itself, and what it becomes here:
//!
//! | tonic's status | reason | code sent | fault |
//! |---|---|---|---|
//! | `OUT_OF_RANGE` "decoded message length too large" (over the 64 KiB decode cap) | `MESSAGE_TOO_LARGE`, metadata `limit_bytes`, `size_bytes` | `INVALID_ARGUMENT` | user |
//! | `INTERNAL` from decoding: not protobuf, a bad compressed flag, a truncated or missing message | `MESSAGE_MALFORMED` | `INVALID_ARGUMENT` | user |
//! | `UNIMPLEMENTED` without a message: no such service or method | `METHOD_UNKNOWN`, metadata `path` | `UNIMPLEMENTED` | user |
//! | `UNIMPLEMENTED` "Content is compressed with …" | `COMPRESSION_UNSUPPORTED` | `UNIMPLEMENTED` | user |
//! | anything else without `ErrorInfo` | the code's name | unchanged | by code |
//!
//! A status that already carries a `mintgate` `ErrorInfo` is left alone. Both places a status
//! travels are covered: the headers of a trailers-only response (how tonic answers a call it
//! refuses before the handler) and the trailers at the end of a response body (how a stream
//! ends). Metadata tonic attached (e.g. `grpc-accept-encoding`) is kept.
//!
//! The client's own deadline and the server's are answered with `ErrorInfo` by
//! [`crate::deadline`]; calls over the per-connection concurrency limit wait for a slot rather
//! than being refused.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::metrics::Class;
use crate::rpc_metrics;
use crate::status::{ERROR_DOMAIN, rpc_name};

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefusalLayer {
    /// The decode cap every service is built with, reported as `limit_bytes`.
    max_message_bytes: usize,
}

impl RefusalLayer {
    pub(crate) fn new(max_message_bytes: usize) -> Self {
        Self { max_message_bytes }
    }
}

impl<S> Layer<S> for RefusalLayer {
    type Service = Refusals<S>;

    fn layer(&self, inner: S) -> Refusals<S> {
        Refusals {
            inner,
            layer: *self,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Refusals<S> {
    inner: S,
    layer: RefusalLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<Request<B>> for Refusals<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<RefusalBody<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call = Arc::new(CallInfo {
            path: request.uri().path().into(),
            max_message_bytes: self.layer.max_message_bytes,
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            call.rewrite(response.headers_mut());
            Ok(response.map(|inner| RefusalBody { inner, call }))
        })
    }
}

/// What a rewritten status says about its call.
#[derive(Debug)]
struct CallInfo {
    path: Box<str>,
    max_message_bytes: usize,
}

impl CallInfo {
    /// Rewrites the status in `headers` (response headers or trailers), if there is one that is
    /// an error without our `ErrorInfo`.
    fn rewrite(&self, headers: &mut HeaderMap) {
        match headers.get(Status::GRPC_STATUS) {
            None => return,
            Some(code) if code.as_bytes() == b"0" => return,
            Some(_) => {}
        }
        let Some(status) = Status::from_header_map(headers) else {
            return;
        };
        let Some(ours) = self.refusal(&status) else {
            return;
        };
        headers.remove(Status::GRPC_MESSAGE);
        headers.remove(Status::GRPC_STATUS_DETAILS);
        if let Err(e) = ours.add_header(headers) {
            // Only a message that is not a valid header value fails here; ours never are.
            tracing::error!(error = %e, "a refusal could not be written into the response");
        }
    }

    /// The status to send instead of `status`, or `None` if it is ours already.
    fn refusal(&self, status: &Status) -> Option<Status> {
        if status
            .get_details_error_info()
            .is_some_and(|info| info.domain == ERROR_DOMAIN)
        {
            return None;
        }
        let rpc = rpc_name(&self.path);
        let tonic_message = status.message();
        let mut metadata = HashMap::new();
        let (code, reason, fault, message) = match Kind::of(status) {
            Kind::TooLarge => {
                metadata.insert("limit_bytes".to_owned(), self.max_message_bytes.to_string());
                let size = found_bytes(tonic_message);
                if let Some(size) = size {
                    metadata.insert("size_bytes".to_owned(), size.to_string());
                }
                let message = match size {
                    Some(size) => format!(
                        "{rpc}: the request message is {size} bytes, over the limit of {} bytes",
                        self.max_message_bytes
                    ),
                    None => format!(
                        "{rpc}: the request message is over the limit of {} bytes",
                        self.max_message_bytes
                    ),
                };
                (
                    Code::InvalidArgument,
                    "MESSAGE_TOO_LARGE",
                    Fault::User,
                    message,
                )
            }
            Kind::Malformed => (
                Code::InvalidArgument,
                "MESSAGE_MALFORMED",
                Fault::User,
                format!("{rpc}: the request message could not be decoded ({tonic_message})"),
            ),
            Kind::MethodUnknown => {
                metadata.insert("path".to_owned(), self.path.to_string());
                (
                    Code::Unimplemented,
                    "METHOD_UNKNOWN",
                    Fault::User,
                    format!("{rpc}: this server has no method {}", self.path),
                )
            }
            Kind::CompressionUnsupported => (
                Code::Unimplemented,
                "COMPRESSION_UNSUPPORTED",
                Fault::User,
                format!("{rpc}: {tonic_message}"),
            ),
            Kind::Other { reason, fault } => {
                let message = match fault {
                    Fault::User => format!("{rpc}: {tonic_message}"),
                    // Whatever tonic said stays in the log, as for our own system faults.
                    Fault::System => format!("{rpc}: internal error"),
                };
                (status.code(), reason, fault, message)
            }
        };
        match fault {
            Fault::User => tracing::info!(
                rpc,
                path = %self.path,
                reason,
                "refused before the handler: {tonic_message}"
            ),
            Fault::System => tracing::error!(
                rpc,
                path = %self.path,
                reason,
                "failed before the handler: {tonic_message}"
            ),
        }
        metadata.insert("fault".to_owned(), fault.as_str().to_owned());
        let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
        // Metadata tonic attached (e.g. `grpc-accept-encoding`) stays in the header map.
        Some(Status::with_error_details(code, message, details))
    }
}

/// What tonic refused, told by its code and, where one code covers several causes, its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TooLarge,
    Malformed,
    MethodUnknown,
    CompressionUnsupported,
    Other { reason: &'static str, fault: Fault },
}

/// How tonic's decoder words the failures that are the sender's: not protobuf, a bad
/// compressed flag, a message cut short or missing, a compressed message that does not inflate.
const DECODE_FAILURES: [&str; 5] = [
    "failed to decode Protobuf message",
    "protocol error:",
    "Unexpected EOF decoding stream",
    "Missing request message",
    "Error decompressing",
];

impl Kind {
    fn of(status: &Status) -> Self {
        let message = status.message();
        match status.code() {
            // tonic's only OUT_OF_RANGE: a message over the decode cap.
            Code::OutOfRange => Self::TooLarge,
            // A compressed message that inflates past the cap.
            Code::ResourceExhausted if message.starts_with("Error decompressing: size limit") => {
                Self::TooLarge
            }
            Code::Internal | Code::InvalidArgument
                if DECODE_FAILURES.iter().any(|m| message.starts_with(m)) =>
            {
                Self::Malformed
            }
            // The router's fallback and a service's unknown method answer with no message.
            Code::Unimplemented if message.is_empty() => Self::MethodUnknown,
            Code::Unimplemented if message.starts_with("Content is compressed with") => {
                Self::CompressionUnsupported
            }
            code => {
                let (reason, fault) = by_code(code);
                Self::Other { reason, fault }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    User,
    System,
}

impl Fault {
    fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::System => "system",
        }
    }
}

/// The reason and fault of a status nothing else explains: the code's name, and whose it
/// usually is (DESIGN §2: UNAVAILABLE and INTERNAL are ours), as the metrics count it.
fn by_code(code: Code) -> (&'static str, Fault) {
    let (reason, class) = rpc_metrics::by_code(code);
    let fault = match class {
        Class::System => Fault::System,
        Class::User | Class::Ok => Fault::User,
    };
    (reason, fault)
}

/// The size tonic found, from "… length too large: found 70016 bytes, the limit is …".
fn found_bytes(message: &str) -> Option<u64> {
    let (_, rest) = message.split_once("found ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A response body whose trailers, if they end the call with an error tonic made, get the same
/// treatment as the headers of a trailers-only response.
pub(crate) struct RefusalBody<B> {
    inner: B,
    call: Arc<CallInfo>,
}

impl<B> Body for RefusalBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    self.call.rewrite(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::codegen::Bytes;
    use tonic::codegen::http::HeaderValue;

    use super::*;

    /// A body of one data frame and the given trailers.
    #[derive(Default)]
    struct Ending {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    }

    impl Body for Ending {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let frame = match self.data.take() {
                Some(data) => Some(Frame::data(data)),
                None => self.trailers.take().map(Frame::trailers),
            };
            Poll::Ready(frame.map(Ok))
        }
    }

    /// A route that answers with `response`.
    #[derive(Clone)]
    struct Answers(Arc<dyn Fn() -> Response<Ending> + Send + Sync>);

    impl Service<Request<()>> for Answers {
        type Response = Response<Ending>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Ending>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok((self.0)()))
        }
    }

    async fn through(
        path: &str,
        response: impl Fn() -> Response<Ending> + Send + Sync + 'static,
    ) -> Response<RefusalBody<Ending>> {
        let request = Request::builder().uri(path).body(()).unwrap();
        RefusalLayer::new(65536)
            .layer(Answers(Arc::new(response)))
            .call(request)
            .await
            .unwrap()
    }

    /// The status of a trailers-only response after the layer.
    async fn refused(path: &str, status: fn() -> Status) -> Status {
        let response = through(path, move || {
            let (parts, ()) = status().into_http::<()>().into_parts();
            Response::from_parts(parts, Ending::default())
        })
        .await;
        Status::from_header_map(response.headers()).unwrap()
    }

    fn info(status: &Status) -> (String, HashMap<String, String>) {
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.domain, "mintgate");
        (info.reason, info.metadata)
    }

    #[tokio::test]
    async fn an_oversized_message_is_message_too_large_with_the_limit() {
        let status = refused("/mintgate.v1.Provisioning/Enroll", || {
            Status::out_of_range(
                "Error, decoded message length too large: found 70016 bytes, the limit is: 65536 bytes",
            )
        })
        .await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "Enroll: the request message is 70016 bytes, over the limit of 65536 bytes"
        );
        let (reason, metadata) = info(&status);
        assert_eq!(reason, "MESSAGE_TOO_LARGE");
        assert_eq!(metadata["fault"], "user");
        assert_eq!(metadata["limit_bytes"], "65536");
        assert_eq!(metadata["size_bytes"], "70016");
    }

    #[tokio::test]
    async fn decode_failures_are_the_senders_and_unknown_paths_are_method_unknown() {
        let status = refused("/mintgate.v1.Provisioning/Enroll", || {
            Status::internal("failed to decode Protobuf message: invalid wire type value: 7")
        })
        .await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(info(&status).0, "MESSAGE_MALFORMED");
        assert_eq!(info(&status).1["fault"], "user");

        let status = refused("/nope.v1.Nothing/Here", || Status::unimplemented("")).await;
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(
            status.message(),
            "Here: this server has no method /nope.v1.Nothing/Here"
        );
        let (reason, metadata) = info(&status);
        assert_eq!(reason, "METHOD_UNKNOWN");
        assert_eq!(metadata["path"], "/nope.v1.Nothing/Here");
        assert_eq!(metadata["fault"], "user");
    }

    #[tokio::test]
    async fn metadata_tonic_attached_is_kept() {
        let status = refused("/mintgate.v1.Provisioning/Enroll", || {
            let mut status =
                Status::unimplemented("Content is compressed with `gzip` which isn't supported");
            status
                .metadata_mut()
                .insert("grpc-accept-encoding", "identity".parse().unwrap());
            status
        })
        .await;
        assert_eq!(info(&status).0, "COMPRESSION_UNSUPPORTED");
        assert_eq!(
            status.metadata().get("grpc-accept-encoding").unwrap(),
            "identity"
        );
    }

    #[tokio::test]
    async fn other_system_faults_keep_their_code_and_hide_their_message() {
        let status = refused("/mintgate.v1.Provisioning/Enroll", || {
            Status::internal("Error, encoded message length too large")
        })
        .await;
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "Enroll: internal error");
        assert_eq!(info(&status).0, "INTERNAL");
        assert_eq!(info(&status).1["fault"], "system");
    }

    #[tokio::test]
    async fn our_own_errors_and_successes_pass_unchanged() {
        let ours = || {
            let metadata = HashMap::from([("fault".to_owned(), "user".to_owned())]);
            let details = ErrorDetails::with_error_info("CSR_TOO_LARGE", ERROR_DOMAIN, metadata);
            Status::with_error_details(Code::InvalidArgument, "Enroll: too large", details)
        };
        let status = refused("/mintgate.v1.Provisioning/Enroll", ours).await;
        assert_eq!(status.message(), "Enroll: too large");
        assert_eq!(info(&status).0, "CSR_TOO_LARGE");

        let response = through("/mintgate.v1.Provisioning/Enroll", || {
            Response::new(Ending {
                data: Some(Bytes::from_static(b"\0\0\0\0\0")),
                trailers: Some(HeaderMap::from_iter([(
                    Status::GRPC_STATUS,
                    HeaderValue::from_static("0"),
                )])),
            })
        })
        .await;
        assert!(response.headers().get(Status::GRPC_STATUS).is_none());
        let trailers = trailers(response).await;
        assert_eq!(trailers.len(), 1, "{trailers:?}");
    }

    #[tokio::test]
    async fn an_error_in_the_trailers_of_a_stream_is_rewritten_too() {
        let response = through("/mintgate.v1.Revocation/WatchRevocations", || {
            let mut trailers = HeaderMap::new();
            Status::internal("Unexpected EOF decoding stream.")
                .add_header(&mut trailers)
                .unwrap();
            Response::new(Ending {
                data: Some(Bytes::from_static(b"\0\0\0\0\0")),
                trailers: Some(trailers),
            })
        })
        .await;
        let status = Status::from_header_map(&trailers(response).await).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("WatchRevocations: "),
            "{status:?}"
        );
        assert_eq!(info(&status).0, "MESSAGE_MALFORMED");
    }

    /// The trailers at the end of `response`'s body.
    async fn trailers(response: Response<RefusalBody<Ending>>) -> HeaderMap {
        let mut body = response.into_body();
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .expect("a trailers frame")
                .unwrap();
            if let Ok(trailers) = frame.into_trailers() {
                return trailers;
            }
        }
    }

    #[test]
    fn the_found_size_is_read_from_tonics_message() {
        assert_eq!(
            found_bytes(
                "Error, decoded message length too large: found 70016 bytes, the limit is: 65536 bytes"
            ),
            Some(70016)
        );
        assert_eq!(found_bytes("too large"), None);
    }
}
