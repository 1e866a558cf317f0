//! Mirroring ("shadowing"): a share of a rule's requests is copied to a
//! shadow destination, e.g. a new version under test, with production
//! traffic and no effect on the caller.
//!
//! The copy is sent from its own task: its response is read and discarded,
//! its failures are only counted, and it never delays the original, whose
//! body streams as usual while a copy is kept up to `max_body_bytes`. The
//! copy leaves once the body has ended; a larger body is not mirrored. The
//! shadow's host gets a `-shadow` suffix (as Envoy does) so it can tell
//! copies apart. Copies are not retried and at most [`MAX_IN_FLIGHT`] per
//! rule run at once, so a slow shadow cannot pile up work in the proxy.

mod error;
mod layer;
mod tee;

pub use self::error::Skipped;
pub use self::layer::MirrorLayer;

use self::tee::TeeBody;
use crate::body::{self, Body};
use crate::cluster::Cluster;
use crate::cluster::Destination;
use crate::error::ProxyError;
use crate::policy::fault::FaultPolicy;
use crate::policy::retry::RetryPolicy;
use crate::policy::timeout::{PerTryTimeout, RequestTimeout};
use crate::telemetry::ResilienceMetrics;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use rand::Rng;
use sane_xds_proto as proto;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tower::ServiceExt;

/// Mirrored requests in flight per rule, at most.
pub const MAX_IN_FLIGHT: usize = 256;
/// Timeout of a mirrored request when its rule has none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Most of a shadow's response body read (and discarded) to reuse its
/// connection; the rest is dropped with the stream.
const MAX_DRAIN: usize = 1 << 20;

/// A rule's mirror policy, compiled.
#[derive(Debug)]
pub struct MirrorPolicy {
    cluster: Arc<Cluster>,
    share: f64,
    max_body: usize,
    in_flight: Arc<AtomicUsize>,
}

/// Copies requests that carry a [`MirrorPolicy`].
#[derive(Clone, Debug)]
pub struct Mirror<S> {
    inner: S,
    metrics: ResilienceMetrics,
}

/// Counts a mirrored request in flight until dropped.
struct Slot(Arc<AtomicUsize>);

// === impl MirrorPolicy ===

impl MirrorPolicy {
    /// Mirrors to `cluster` per `p`.
    pub fn new(cluster: Arc<Cluster>, p: &proto::MirrorPolicy) -> Self {
        Self {
            cluster,
            share: p.percent_or_default() / 100.0,
            max_body: p.max_body_bytes() as usize,
            in_flight: Arc::default(),
        }
    }

    /// The shadow cluster.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    fn sample(&self, rng: &mut impl Rng) -> bool {
        self.share >= 1.0 || (self.share > 0.0 && rng.random::<f64>() < self.share)
    }

    fn take_slot(&self) -> Option<Slot> {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.in_flight.clone());
        (n < MAX_IN_FLIGHT).then_some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl Mirror ===

impl<S> Mirror<S> {
    /// Wraps `inner`, which also carries the copies; they are counted in
    /// `metrics`.
    pub fn new(inner: S, metrics: ResilienceMetrics) -> Self {
        Self { inner, metrics }
    }
}

impl<S> tower::Service<Request<Body>> for Mirror<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    /// The original always goes on below, whether or not a copy was made.
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let policy = req
            .extensions()
            .get::<Arc<MirrorPolicy>>()
            .filter(|p| p.sample(&mut rand::rng()))
            .cloned();
        let req = match policy {
            None => req,
            Some(p) => match self.copy(&p, req) {
                Ok(req) => req,
                Err((req, skipped)) => {
                    self.metrics.mirror(&p.cluster.name, skipped.label());
                    req
                }
            },
        };
        self.inner.call(req)
    }
}

impl<S> Mirror<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    /// Starts the copy of `req`; returns the original to send on.
    #[allow(clippy::result_large_err)] // hands the request back either way
    fn copy(
        &self,
        policy: &Arc<MirrorPolicy>,
        req: Request<Body>,
    ) -> Result<Request<Body>, (Request<Body>, Skipped)> {
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > policy.max_body as u64) {
            return Err((req, Skipped::BodyTooLarge));
        }
        let Some(slot) = policy.take_slot() else {
            return Err((req, Skipped::Busy));
        };
        let mut shadow = Request::new(body::empty());
        *shadow.method_mut() = req.method().clone();
        *shadow.uri_mut() = req.uri().clone();
        *shadow.version_mut() = req.version();
        *shadow.headers_mut() = req.headers().clone();
        let ext = shadow.extensions_mut();
        *ext = req.extensions().clone();
        ext.remove::<Arc<MirrorPolicy>>();
        ext.remove::<Arc<RetryPolicy>>();
        ext.remove::<PerTryTimeout>();
        ext.remove::<Arc<FaultPolicy>>();
        if ext.get::<RequestTimeout>().is_none() {
            ext.insert(RequestTimeout(DEFAULT_TIMEOUT));
        }
        let authority = ext
            .get::<Destination>()
            .map(|d| shadow_authority(&d.authority))
            .unwrap_or_else(|| format!("{}-shadow", policy.cluster.name));
        Destination {
            cluster: policy.cluster.clone(),
            authority,
        }
        .insert_into(ext);

        let (req, copied) = if req.body().is_end_stream() {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(body::empty());
            (req, rx)
        } else {
            let (tx, rx) = oneshot::channel();
            let max = policy.max_body;
            (req.map(|b| TeeBody::new(b, tx, max).boxed_unsync()), rx)
        };
        let inner = self.inner.clone();
        let metrics = self.metrics.clone();
        let cluster = policy.cluster.name.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(body) = copied.await else {
                metrics.mirror(&cluster, Skipped::BodyTooLarge.label());
                return;
            };
            *shadow.body_mut() = body;
            match inner.oneshot(shadow).await {
                Ok(rsp) => {
                    metrics.mirror(&cluster, "sent");
                    drain(rsp.into_body()).await;
                }
                Err(e) => {
                    metrics.mirror(&cluster, "failed");
                    tracing::debug!(%cluster, error = %e, "mirrored request failed");
                }
            }
        });
        Ok(req)
    }
}

/// `host[:port]` becomes `host-shadow[:port]`.
fn shadow_authority(authority: &str) -> String {
    match authority.parse::<http::uri::Authority>() {
        Ok(a) => match a.port_u16() {
            Some(p) => format!("{}-shadow:{p}", a.host()),
            None => format!("{}-shadow", a.host()),
        },
        Err(_) => format!("{authority}-shadow"),
    }
}

async fn drain(mut body: Body) {
    let mut read = 0;
    while read <= MAX_DRAIN {
        match body.frame().await {
            Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sane_xds_proto::{LoadBalancer, ServicePort};
    use tower::Layer;
    use tower_test::mock;

    type BoxedSvc = tower::util::BoxCloneService<Request<Body>, Response<Body>, ProxyError>;
    type Handle = mock::Handle<Request<Body>, Response<Body>>;

    fn stack() -> (BoxedSvc, Handle, prometheus::Registry) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let registry = prometheus::Registry::new();
        let m = ResilienceMetrics::register(&registry).unwrap();
        let svc = MirrorLayer::new(m).layer(svc.map_err(|_| ProxyError::Draining));
        (BoxedSvc::new(svc), handle, registry)
    }

    fn cluster(name: &str) -> Arc<Cluster> {
        let port = ServicePort {
            port: 80,
            ..Default::default()
        };
        Arc::new(Cluster::new(
            name.into(),
            &port,
            vec![],
            LoadBalancer::default(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        ))
    }

    fn req(body: Body, percent: f64, max_body_bytes: u32) -> Request<Body> {
        let mut r = Request::builder()
            .method("POST")
            .uri("/orders")
            .body(body)
            .unwrap();
        let p = MirrorPolicy::new(
            cluster("echo-v2.default:80"),
            &proto::MirrorPolicy {
                service: "echo-v2".into(),
                percent: Some(percent),
                max_body_bytes,
                ..Default::default()
            },
        );
        let ext = r.extensions_mut();
        ext.insert(Arc::new(p));
        ext.insert(Arc::new(RetryPolicy::compile(&Default::default())));
        Destination {
            cluster: cluster("echo.default:80"),
            authority: "echo:8080".into(),
        }
        .insert_into(ext);
        r
    }

    fn metrics_text(r: &prometheus::Registry) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn copies_go_to_the_shadow_and_never_hold_the_original() {
        let (svc, mut handle, registry) = stack();
        let call = tokio::spawn(svc.oneshot(req(body::empty(), 100.0, 0)));
        let (main, send) = handle.next_request().await.unwrap();
        assert_eq!(
            main.extensions().get::<Destination>().unwrap().cluster.name,
            "echo.default:80"
        );
        send.send_response(Response::new(body::empty()));
        // The original completes while the shadow has not even answered.
        assert!(call.await.unwrap().is_ok());
        let (shadow, send) = handle.next_request().await.unwrap();
        let d = shadow.extensions().get::<Destination>().unwrap();
        assert_eq!(d.cluster.name, "echo-v2.default:80");
        assert_eq!(d.authority, "echo-shadow:8080");
        assert!(shadow.extensions().get::<Arc<RetryPolicy>>().is_none());
        assert!(shadow.extensions().get::<RequestTimeout>().is_some());
        let mut rsp = Response::new(body::empty());
        *rsp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        send.send_response(rsp);
        tokio::task::yield_now().await;
        let t = metrics_text(&registry);
        assert!(t.contains("result=\"sent\"} 1"), "{t}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_body_is_copied_once_the_original_has_read_it() {
        let (svc, mut handle, _r) = stack();
        let call = tokio::spawn(svc.oneshot(req(body::full("abc"), 100.0, 0)));
        let (main, send) = handle.next_request().await.unwrap();
        let sent = main.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(sent, "abc");
        send.send_response(Response::new(body::empty()));
        assert!(call.await.unwrap().is_ok());
        let (shadow, _send) = handle.next_request().await.unwrap();
        let copied = shadow.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(copied, "abc");
    }

    #[tokio::test(start_paused = true)]
    async fn large_bodies_and_unsampled_requests_are_not_copied() {
        let (svc, mut handle, registry) = stack();
        let call = tokio::spawn(svc.clone().oneshot(req(body::full("too large"), 100.0, 4)));
        let (main, send) = handle.next_request().await.unwrap();
        main.into_body().collect().await.unwrap();
        send.send_response(Response::new(body::empty()));
        assert!(call.await.unwrap().is_ok());
        let call = tokio::spawn(svc.oneshot(req(body::empty(), 0.0, 0)));
        let (_main, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(body::empty()));
        assert!(call.await.unwrap().is_ok());
        tokio::task::yield_now().await;
        let next = futures::FutureExt::now_or_never(handle.next_request());
        assert!(!matches!(next, Some(Some(_))), "no shadow request");
        let t = metrics_text(&registry);
        assert!(t.contains("result=\"skipped_body\"} 1"), "{t}");
    }

    #[test]
    fn shadow_hosts_keep_their_port() {
        assert_eq!(shadow_authority("echo"), "echo-shadow");
        assert_eq!(
            shadow_authority("echo.default:80"),
            "echo.default-shadow:80"
        );
    }
}
