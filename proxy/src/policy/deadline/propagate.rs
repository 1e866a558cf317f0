//! Rewriting the deadline headers for the next hop, per attempt.

use super::{encode_grpc_timeout, is_grpc, DeadlineExceeded, RequestDeadline, DEADLINE};
use crate::body::Body;
use crate::error::ProxyError;
use crate::policy::timeout::PerTryTimeout;
use futures::future::{self, Either, Ready};
use http::{HeaderValue, Request, Response};
use std::task::{Context, Poll};
use tokio::time::Instant;

/// Tells the next hop how long it has: the time left until the request's
/// [`RequestDeadline`], or the attempt's per-try timeout if shorter, as
/// `x-sane-deadline-ms` (and `grpc-timeout` for gRPC). An attempt with no
/// time left fails with `UT` without being sent.
#[derive(Clone, Debug)]
pub struct Propagate<S> {
    pub(super) inner: S,
}

impl<S> tower::Service<Request<Body>> for Propagate<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    /// The inner future, or at once the error of an attempt with no time left.
    type Future = Either<S::Future, Ready<Result<Response<Body>, ProxyError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(deadline) = req.extensions().get::<RequestDeadline>().copied() else {
            return Either::Left(self.inner.call(req));
        };
        let mut left = deadline.at.saturating_duration_since(Instant::now());
        if let Some(PerTryTimeout(t)) = req.extensions().get::<PerTryTimeout>() {
            left = left.min(*t);
        }
        if left.is_zero() {
            let err = DeadlineExceeded(deadline.budget).into();
            return Either::Right(future::ready(Err(err)));
        }
        let ms = (left.as_millis() as u64).max(1);
        let h = req.headers_mut();
        h.insert(DEADLINE, HeaderValue::from(ms));
        if is_grpc(h) {
            h.insert(super::GRPC_TIMEOUT, encode_grpc_timeout(left));
        }
        Either::Left(self.inner.call(req))
    }
}
