//! Services the layers' unit tests route to.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::codegen::http::{Request, Response};
use tower::Service;

/// A route that never answers.
pub(crate) struct Stuck;

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
