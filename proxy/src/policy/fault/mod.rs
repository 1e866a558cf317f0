//! Fault injection (Istio VirtualService style): delay a share of requests
//! and/or answer a share with an error instead of sending them, so teams can
//! test how callers cope with a slow or failing dependency without breaking
//! it. Delayed responses carry response flag `DI`, aborted ones `FI`.
//!
//! The layer sits right below routing, above the timeouts: an injected delay
//! stands for time the request never spent upstream, so it does not eat the
//! route's timeout budget, and aborted requests never reach the mirror,
//! retries, circuit breaker or endpoint.

mod error;
mod layer;

pub use self::error::Aborted;
pub use self::layer::FaultLayer;

use crate::body::Body;
use crate::error::{add_response_flag, ProxyError};
use crate::policy::PolicyFuture;
use crate::telemetry::ResilienceMetrics;
use futures::future::Either;
use http::{Request, Response};
use rand::Rng;
use sane_xds_proto as proto;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A rule's fault policy, compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPolicy {
    /// `(delay, share in 0..=1)`.
    delay: Option<(Duration, f64)>,
    /// `(answer, share in 0..=1)`.
    abort: Option<(Aborted, f64)>,
}

/// What to do to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer this instead of sending the request.
    pub abort: Option<Aborted>,
}

/// Applies the request's [`FaultPolicy`], if any.
#[derive(Clone, Debug)]
pub struct Fault<S> {
    inner: S,
    metrics: ResilienceMetrics,
}

// === impl FaultPolicy ===

impl FaultPolicy {
    /// Compiles a validated policy.
    pub fn compile(p: &proto::FaultPolicy) -> Self {
        Self {
            delay: p.delay.as_ref().map(|d| {
                (
                    Duration::from_millis(d.fixed_delay_ms),
                    d.percent_or_default() / 100.0,
                )
            }),
            abort: p.abort.as_ref().map(|a| {
                let grpc_status = (!a.grpc_status.is_empty())
                    .then(|| proto::grpc_code(&a.grpc_status))
                    .flatten();
                let answer = Aborted {
                    status: u16::try_from(a.http_status).unwrap_or(503),
                    grpc_status,
                };
                (answer, a.percent_or_default() / 100.0)
            }),
        }
    }

    /// The delay and the share of requests (0-1) it applies to.
    pub fn delay(&self) -> Option<(Duration, f64)> {
        self.delay
    }

    /// The answer and the share of requests (0-1) aborted with it.
    pub fn abort(&self) -> Option<(Aborted, f64)> {
        self.abort
    }

    /// Draws the faults for one request (delay and abort independently).
    pub fn decide(&self, rng: &mut impl Rng) -> Decision {
        let hit = |share: f64, rng: &mut dyn rand::RngCore| {
            share >= 1.0 || (share > 0.0 && rng.random::<f64>() < share)
        };
        Decision {
            delay: self.delay.filter(|(_, s)| hit(*s, rng)).map(|(d, _)| d),
            abort: self.abort.filter(|(_, s)| hit(*s, rng)).map(|(a, _)| a),
        }
    }
}

// === impl Fault ===

impl<S> Fault<S> {
    /// Wraps `inner`; injected faults are counted in `metrics`.
    pub fn new(inner: S, metrics: ResilienceMetrics) -> Self {
        Self { inner, metrics }
    }
}

impl<S> tower::Service<Request<Body>> for Fault<S>
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
        let decision = req
            .extensions()
            .get::<Arc<FaultPolicy>>()
            .map(|p| p.decide(&mut rand::rng()))
            .unwrap_or_default();
        if decision == Decision::default() {
            return Either::Left(self.inner.call(req));
        }
        // The clone is not ready yet; keep it and send with the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        Either::Right(Box::pin(async move {
            if let Some(d) = decision.delay {
                metrics.fault("delay");
                tokio::time::sleep(d).await;
            }
            if let Some(a) = decision.abort {
                metrics.fault("abort");
                return Err(a.into());
            }
            let mut rsp = inner.call(req).await?;
            add_response_flag(rsp.headers_mut(), "DI");
            Ok(rsp)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::error::RESPONSE_FLAGS_HEADER;
    use rand::{rngs::StdRng, SeedableRng};
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    type BoxedSvc = tower::util::BoxCloneService<Request<Body>, Response<Body>, ProxyError>;

    fn stack() -> (BoxedSvc, mock::Handle<Request<Body>, Response<Body>>) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let m = ResilienceMetrics::register(&prometheus::Registry::new()).unwrap();
        let svc = FaultLayer::new(m).layer(svc.map_err(|_| ProxyError::Draining));
        (BoxedSvc::new(svc), handle)
    }

    fn req(p: proto::FaultPolicy) -> Request<Body> {
        let mut r = Request::new(body::empty());
        r.extensions_mut()
            .insert(Arc::new(FaultPolicy::compile(&p)));
        r
    }

    fn delay(ms: u64, percent: Option<f64>) -> Option<proto::FaultDelay> {
        Some(proto::FaultDelay {
            fixed_delay_ms: ms,
            percent,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_the_request_then_flags_di() {
        let (svc, mut handle) = stack();
        let started = tokio::time::Instant::now();
        let call = tokio::spawn(svc.oneshot(req(proto::FaultPolicy {
            delay: delay(2_000, None),
            ..Default::default()
        })));
        let (_r, send) = handle.next_request().await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        send.send_response(Response::new(body::empty()));
        let rsp = call.await.unwrap().unwrap();
        assert_eq!(rsp.headers()[RESPONSE_FLAGS_HEADER], "DI");
    }

    #[tokio::test(start_paused = true)]
    async fn abort_answers_without_sending() {
        let (svc, mut handle) = stack();
        let err = svc
            .clone()
            .oneshot(req(proto::FaultPolicy {
                abort: Some(proto::FaultAbort {
                    http_status: 418,
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        let rsp = err.to_response();
        assert_eq!(rsp.status(), 418);
        assert_eq!(rsp.headers()[RESPONSE_FLAGS_HEADER], "FI");
        let err = svc
            .oneshot(req(proto::FaultPolicy {
                abort: Some(proto::FaultAbort {
                    grpc_status: "UNAVAILABLE".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.to_response().headers()["grpc-status"], "14");
        drop(err);
        let none = futures::FutureExt::now_or_never(handle.next_request());
        assert!(!matches!(none, Some(Some(_))), "nothing was sent upstream");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_percent_passes_untouched() {
        let (svc, mut handle) = stack();
        let call = tokio::spawn(svc.oneshot(req(proto::FaultPolicy {
            delay: delay(1_000, Some(0.0)),
            abort: Some(proto::FaultAbort {
                http_status: 500,
                percent: Some(0.0),
                ..Default::default()
            }),
        })));
        let (_r, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(body::empty()));
        let rsp = call.await.unwrap().unwrap();
        assert!(rsp.headers().get(RESPONSE_FLAGS_HEADER).is_none());
    }

    #[test]
    fn shares_are_drawn_independently() {
        let p = FaultPolicy::compile(&proto::FaultPolicy {
            delay: delay(10, Some(25.0)),
            abort: Some(proto::FaultAbort {
                http_status: 503,
                percent: Some(0.5),
                ..Default::default()
            }),
        });
        let mut rng = StdRng::seed_from_u64(9);
        let draws: Vec<_> = (0..20_000).map(|_| p.decide(&mut rng)).collect();
        let delayed = draws.iter().filter(|d| d.delay.is_some()).count();
        let aborted = draws.iter().filter(|d| d.abort.is_some()).count();
        assert!((4_500..5_500).contains(&delayed), "{delayed}");
        assert!((50..150).contains(&aborted), "{aborted}");
    }
}
