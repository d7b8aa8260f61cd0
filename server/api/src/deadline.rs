//! The deadline of every call: the server's own (`[grpc] call_timeout_ms`, 30 s by default), or
//! the client's (`grpc-timeout`) when that is sooner.
//!
//! A call still unanswered when the server's deadline passes is answered `DEADLINE_EXCEEDED`
//! with `ErrorInfo` reason `SERVER_TIMEOUT`, fault `system` (see
//! [`crate::status::server_timeout`]), and its handler is dropped. The answer is an ordinary
//! response, so the RPC metrics layer outside this one counts it like any other error. (tonic's
//! `Server::timeout` answers `CANCELLED` without `ErrorInfo`, which looks like a client that gave
//! up.)
//!
//! When the client's own deadline passes first, the call is answered the same way with reason
//! `CLIENT_TIMEOUT`, fault `user` (see [`crate::status::client_timeout`]). tonic also watches
//! `grpc-timeout`, outside every layer of ours, and would end the call at that moment with a bare
//! `CANCELLED` that nobody counts; so this layer answers [`CLIENT_DEADLINE_MARGIN`] earlier. tonic
//! polls the call before its own timer, so once our answer is ready it is the one sent.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

use crate::status::{client_timeout, server_timeout};

/// How much sooner than the client's `grpc-timeout` a call is answered `CLIENT_TIMEOUT`, so that
/// the answer is ready before tonic's own timer for the same deadline (started a few
/// microseconds earlier, outside our layers) fires; more than one tick of tokio's 1 ms timer.
pub(crate) const CLIENT_DEADLINE_MARGIN: Duration = Duration::from_millis(5);

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
        let server = self.timeout;
        let client = grpc_timeout(request.headers()).filter(|client| *client < server);
        let path = request.uri().path().to_owned();
        let response = self.inner.call(request);
        Box::pin(async move {
            let wait = client.map_or(server, |c| c.saturating_sub(CLIENT_DEADLINE_MARGIN));
            match tokio::time::timeout(wait, response).await {
                Ok(response) => response,
                Err(_) => Ok(match client {
                    Some(client) => client_timeout(&path, client),
                    None => server_timeout(&path, server),
                }
                .into_http()),
            }
        })
    }
}

/// The client's deadline from its `grpc-timeout` header: at most 8 digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`). A header that does not parse is ignored, as tonic ignores it.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {

    use tonic::Code;
    use tonic::Status;
    use tonic_types::StatusExt;

    use super::*;

    use crate::test_support::Stuck;

    fn enroll(grpc_timeout: Option<&str>) -> Request<()> {
        let mut request = Request::builder().uri("/mintgate.v1.Provisioning/Enroll");
        if let Some(t) = grpc_timeout {
            request = request.header("grpc-timeout", t);
        }
        request.body(()).unwrap()
    }

    async fn answer(server: Duration, grpc_timeout: Option<&str>) -> Status {
        let response = DeadlineLayer::new(server)
            .layer(Stuck)
            .call(enroll(grpc_timeout))
            .await
            .unwrap();
        Status::from_header_map(response.headers()).unwrap()
    }

    #[tokio::test]
    async fn the_sooner_deadline_answers_and_says_whose_it_was() {
        let started = std::time::Instant::now();
        let client = answer(Duration::from_secs(30), Some("200m")).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(200) - CLIENT_DEADLINE_MARGIN
                && elapsed < Duration::from_secs(5),
            "{elapsed:?}"
        );
        assert_eq!(client.code(), Code::DeadlineExceeded, "{client:?}");
        let info = client.get_details_error_info().unwrap();
        assert_eq!(info.reason, "CLIENT_TIMEOUT");
        assert_eq!(info.metadata.get("fault").map(String::as_str), Some("user"));
        assert_eq!(
            info.metadata.get("timeout_ms").map(String::as_str),
            Some("200")
        );
        assert!(client.message().starts_with("Enroll: "), "{client:?}");

        // A client deadline beyond the server's, or one that does not parse, changes nothing.
        for header in ["60S", "1H", "200", "123456789m", "5x", ""] {
            let server = answer(Duration::from_millis(20), Some(header)).await;
            let info = server.get_details_error_info().unwrap();
            assert_eq!(info.reason, "SERVER_TIMEOUT", "grpc-timeout {header:?}");
        }
    }

    #[test]
    fn grpc_timeout_units() {
        let parse = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("4m"), Some(Duration::from_millis(4)));
        assert_eq!(parse("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("m"), None);
        assert_eq!(parse("-1S"), None);
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
