//! Circuit breaking (Envoy/Istio DestinationRule style): limits per
//! destination on requests in flight, requests waiting, connections and
//! retries. A request over a limit fails at once with 503 and flag `UO`
//! instead of queuing, so an overloaded destination sheds load quickly and
//! its callers' resources (sockets, memory, threads) stay free.
//!
//! The route stage puts the destination's [`Breaker`] in the request's
//! extensions; this layer takes a request slot for each attempt (so retries
//! count too) and keeps it until the response body ends. The connection and
//! retry limits are taken where those happen: the endpoint stage and the
//! retry layer.

mod error;
mod layer;
mod limits;

pub use self::error::{Limit, Overflow};
pub use self::layer::CircuitBreakerLayer;
pub use self::limits::{Breaker, Permit};

use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::policy::PolicyFuture;
use crate::telemetry::ResilienceMetrics;
use futures::future::Either;
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Enforces the request's [`Breaker`], if any.
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    metrics: ResilienceMetrics,
}

// === impl CircuitBreaker ===

impl<S> CircuitBreaker<S> {
    /// Wraps `inner`; overflows are counted in `metrics`.
    pub fn new(inner: S, metrics: ResilienceMetrics) -> Self {
        Self { inner, metrics }
    }
}

impl<S> tower::Service<Request<Body>> for CircuitBreaker<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = PolicyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(breaker) = req.extensions().get::<Arc<Breaker>>().cloned() else {
            return Either::Left(self.inner.call(req));
        };
        // The clone is not ready yet; keep it and send with the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        Either::Right(Box::pin(async move {
            let permit = match breaker.acquire_request().await {
                Ok(p) => p,
                Err(e) => {
                    metrics.overflow(breaker.cluster(), e.limit.name());
                    return Err(e.into());
                }
            };
            let rsp = inner.call(req).await?;
            Ok(rsp.map(|b| body::guarded(b, permit)))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sane_xds_proto as proto;
    use std::time::Duration;
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    type Handle = mock::Handle<Request<Body>, Response<Body>>;
    type BoxedSvc = tower::util::BoxCloneService<Request<Body>, Response<Body>, ProxyError>;

    fn stack(limits: proto::CircuitBreaker) -> (BoxedSvc, Handle, Arc<Breaker>) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let metrics = ResilienceMetrics::register(&prometheus::Registry::new()).unwrap();
        let svc = CircuitBreakerLayer::new(metrics).layer(svc.map_err(|_| ProxyError::Draining));
        (
            BoxedSvc::new(svc),
            handle,
            Arc::new(Breaker::new("echo.default:80", &limits)),
        )
    }

    fn req(b: &Arc<Breaker>) -> Request<Body> {
        let mut r = Request::new(body::empty());
        r.extensions_mut().insert(b.clone());
        r
    }

    #[tokio::test(start_paused = true)]
    async fn over_max_requests_fails_fast_with_uo_until_a_body_ends() {
        let (svc, mut handle, b) = stack(proto::CircuitBreaker {
            max_requests: Some(1),
            ..Default::default()
        });
        let first = tokio::spawn(svc.clone().oneshot(req(&b)));
        let (_r, send) = handle.next_request().await.unwrap();
        let err = svc.clone().oneshot(req(&b)).await.unwrap_err();
        assert_eq!(err.response_flag(), "UO");
        assert_eq!(err.status(), 503);
        assert!(err.to_string().contains("max_requests (1)"), "{err}");

        send.send_response(Response::new(body::full("hi")));
        let rsp = first.await.unwrap().unwrap();
        // The slot is held until the response body is done with.
        assert_eq!(b.active_requests(), 1);
        drop(rsp);
        assert_eq!(b.active_requests(), 0);
        let ok = tokio::spawn(svc.oneshot(req(&b)));
        let (_r, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(body::empty()));
        assert!(ok.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn pending_requests_wait_in_order_and_the_rest_overflow() {
        let (svc, mut handle, b) = stack(proto::CircuitBreaker {
            max_requests: Some(1),
            max_pending_requests: 1,
            ..Default::default()
        });
        let first = tokio::spawn(svc.clone().oneshot(req(&b)));
        let (_r, send1) = handle.next_request().await.unwrap();
        let second = tokio::spawn(svc.clone().oneshot(req(&b)));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(b.pending_requests(), 1);
        let err = svc.clone().oneshot(req(&b)).await.unwrap_err();
        assert!(
            err.to_string().contains("max_pending_requests (1)"),
            "{err}"
        );

        send1.send_response(Response::new(body::empty()));
        drop(first.await.unwrap().unwrap());
        let (_r, send2) = handle.next_request().await.unwrap();
        assert_eq!(b.pending_requests(), 0);
        send2.send_response(Response::new(body::empty()));
        assert!(second.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_frees_its_pending_place() {
        let (svc, mut handle, b) = stack(proto::CircuitBreaker {
            max_requests: Some(1),
            max_pending_requests: 1,
            ..Default::default()
        });
        let _first = tokio::spawn(svc.clone().oneshot(req(&b)));
        let _r = handle.next_request().await.unwrap();
        let waiting = tokio::spawn(svc.clone().oneshot(req(&b)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.pending_requests(), 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(b.pending_requests(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_breaker_requests_pass() {
        let (svc, mut handle, _b) = stack(proto::CircuitBreaker::default());
        let call = tokio::spawn(svc.oneshot(Request::new(body::empty())));
        let (_r, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(body::empty()));
        assert!(call.await.unwrap().is_ok());
    }

    #[test]
    fn retry_and_connection_limits_are_try_only() {
        let b = Breaker::new(
            "c",
            &proto::CircuitBreaker {
                max_connections: Some(1),
                max_retries: Some(0),
                ..Default::default()
            },
        );
        let err = b.try_retry().unwrap_err();
        assert_eq!(err.limit, Limit::Retries(0));
        let conn = b.try_connection().unwrap();
        assert!(conn.is_limited());
        assert_eq!(
            b.try_connection().unwrap_err().limit.name(),
            "max_connections"
        );
        drop(conn);
        assert!(b.try_connection().is_ok());
        let open = Breaker::new("c", &proto::CircuitBreaker::default());
        assert!(!open.try_retry().unwrap().is_limited());
    }
}
