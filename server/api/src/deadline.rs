//! The server's own deadline for every call (`[grpc] call_timeout_ms`, 30 s by default).
//!
//! A call still unanswered when it passes is answered `DEADLINE_EXCEEDED` with `ErrorInfo`
//! reason `SERVER_TIMEOUT`, fault `system` (see [`crate::status::server_timeout`]), and its
//! handler is dropped. The answer is an ordinary response, so the RPC metrics layer outside this
//! one counts it like any other error. (tonic's `Server::timeout` answers `CANCELLED` without
//! `ErrorInfo`, which looks like a client that gave up.)
//!
//! A deadline the client set itself (`grpc-timeout`) is the client's: tonic still ends the
//! call when that passes first, after which nobody is waiting for an answer. It is counted as
//! `CANCELLED` (class user), like a call the client cancelled; the client's own library reports
//! `DEADLINE_EXCEEDED` to its caller.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http::{Request, Response};
use tower::{Layer, Service};

use crate::status::server_timeout;

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let timeout = self.timeout;
        let path = request.uri().path().to_owned();
        let response = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, response).await {
                Ok(response) => response,
                Err(_) => Ok(server_timeout(&path, timeout).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::Code;
    use tonic::Status;
    use tonic_types::StatusExt;

    use super::*;

    /// A route that never answers.
    struct Stuck;

    impl Service<Request<()>> for Stuck {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = std::future::Pending<Result<Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::pending()
        }
    }

    #[tokio::test]
    async fn a_stuck_call_is_answered_deadline_exceeded_as_a_system_fault() {
        let request = Request::builder()
            .uri("/mintgate.v1.Provisioning/Enroll")
            .body(())
            .unwrap();
        // A deadline that has passed already: the route is polled once, then timed out.
        let response = DeadlineLayer::new(Duration::ZERO)
            .layer(Stuck)
            .call(request)
            .await
            .unwrap();
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status.message().starts_with("Enroll: "), "{status:?}");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "SERVER_TIMEOUT");
        assert_eq!(info.domain, "mintgate");
        assert_eq!(
            info.metadata.get("fault").map(String::as_str),
            Some("system")
        );
    }
}
