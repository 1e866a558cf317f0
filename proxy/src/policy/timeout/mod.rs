//! Timeouts. The route stage puts a [`RequestTimeout`] (the rule's whole
//! request timeout, retries included) and, with a retry policy, a
//! [`PerTryTimeout`] in the request's extensions. The same layer is stacked
//! twice: [`TimeoutLayer`] above the retries applies the first, and
//! [`PerTryTimeoutLayer`] below them the second, so an attempt that
//! hangs is cut short and retried while the whole request stays bounded.
//!
//! Each bounds everything below it (endpoint selection, connecting, waiting
//! for response headers) and answers 504 with flag `UT` when it elapses.
//! Dropping the inner future cancels the upstream request, so the endpoint
//! stops working for a caller that gave up.

mod error;
mod layer;

pub use self::error::Elapsed;
pub use self::layer::{PerTryTimeoutLayer, TimeoutLayer};

use crate::body::Body;
use crate::error::ProxyError;
use crate::policy::PolicyFuture;
use futures::future::Either;
use http::{Request, Response};
use std::task::{Context, Poll};
use std::time::Duration;

/// The timeout for one request, set by the route stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTimeout(pub Duration);

/// The timeout of each attempt of a request, set by the route stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerTryTimeout(pub Duration);

/// Applies the request's [`RequestTimeout`] (or [`PerTryTimeout`]), if any.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    per_try: bool,
}

// === impl Timeout ===

impl<S> Timeout<S> {
    /// Wraps `inner` in the whole-request timeout.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            per_try: false,
        }
    }

    /// Wraps `inner` in the per-attempt timeout.
    pub fn per_try(inner: S) -> Self {
        Self {
            inner,
            per_try: true,
        }
    }
}

impl<S> tower::Service<Request<Body>> for Timeout<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = PolicyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let limit = if self.per_try {
            req.extensions()
                .get::<PerTryTimeout>()
                .map(|t| RequestTimeout(t.0))
        } else {
            req.extensions().get::<RequestTimeout>().copied()
        };
        let fut = self.inner.call(req);
        let Some(RequestTimeout(d)) = limit else {
            return Either::Left(fut);
        };
        Either::Right(Box::pin(async move {
            match tokio::time::timeout(d, fut).await {
                Ok(r) => r,
                Err(_) => Err(Elapsed(d).into()),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    fn req(timeout: Option<Duration>) -> Request<Body> {
        let mut r = Request::new(crate::body::empty());
        if let Some(t) = timeout {
            r.extensions_mut().insert(RequestTimeout(t));
        }
        r
    }

    #[tokio::test(start_paused = true)]
    async fn elapses_into_a_504() {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let svc = TimeoutLayer.layer(svc.map_err(|_| ProxyError::Draining));
        let call = tokio::spawn(svc.oneshot(req(Some(Duration::from_millis(100)))));
        let (_req, _send) = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_millis(101)).await;
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, ProxyError::Timeout { timeout_ms: 100 }));
        assert_eq!(err.to_response().status(), 504);
    }

    #[tokio::test(start_paused = true)]
    async fn passes_through_in_time_and_without_a_limit() {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let svc = TimeoutLayer.layer(svc.map_err(|_| ProxyError::Draining));
        let call = tokio::spawn(svc.clone().oneshot(req(Some(Duration::from_secs(1)))));
        let (_r, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(crate::body::empty()));
        assert!(call.await.unwrap().is_ok());
        let call = tokio::spawn(svc.oneshot(req(None)));
        let (_r, send) = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        send.send_response(Response::new(crate::body::empty()));
        assert!(call.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_reads_its_own_extension() {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let svc = PerTryTimeoutLayer.layer(svc.map_err(|_| ProxyError::Draining));
        let mut r = req(Some(Duration::from_secs(10)));
        r.extensions_mut()
            .insert(PerTryTimeout(Duration::from_millis(50)));
        let call = tokio::spawn(svc.clone().oneshot(r));
        let (_r, _send) = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_millis(51)).await;
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, ProxyError::Timeout { timeout_ms: 50 }));
        // The whole-request timeout is not its business.
        let call = tokio::spawn(svc.oneshot(req(Some(Duration::from_millis(1)))));
        let (_r, send) = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        send.send_response(Response::new(crate::body::empty()));
        assert!(call.await.unwrap().is_ok());
    }
}
