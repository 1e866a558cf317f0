//! The HTTP request stacks, one function per direction, outermost first.
//!
//! Outbound (the local app calls a service):
//! 1. `observe`: metrics, the hop's trace span and the access log see the
//!    final outcome, including errors turned into responses, so it sits
//!    outside everything; it continues (or starts) the trace.
//! 2. `path`: the path is normalized (dot segments, merged slashes,
//!    decoded unreserved characters; `protocol::path`) before anything
//!    reads it, so routes see, and the destination gets, the path a policy
//!    would; a path refused (an encoded slash) is a `400` that goes no
//!    further.
//! 3. `route`: resolves the authority to a service port, picks the rule and
//!    weighted destination cluster, and puts the route's timeout, the rule's
//!    policies and the destination (with its breaker and retry budget) in
//!    the request's extensions for the layers below.
//! 4. `fault`: injected delays are not upstream time, so they sit above the
//!    timeouts; aborted requests never reach mirror, retry, breaker or
//!    endpoint.
//! 5. `headers`: rewrites before the mirror, so the shadow sees the request
//!    the destination sees; response rewrites apply to the final answer.
//! 6. `mirror`: once per request, not per attempt; the copy runs detached
//!    through the layers below with the shadow as its destination.
//! 7. `timeout`: the route's whole-request timeout bounds every attempt and
//!    backoff below it, connecting included.
//! 8. `deadline`: one deadline from the caller's `grpc-timeout` /
//!    `x-sane-deadline-ms` and the route timeout, shared by all attempts;
//!    the caller's runs out → 504 `UT`.
//! 9. `retry` (with the destination's retry budget): each attempt goes
//!    through everything below again.
//! 10. `circuit breaker`: every attempt takes a request slot (retries count);
//!     over a limit → 503 `UO` at once.
//! 11. `per-try timeout`: bounds one attempt; time waiting for a breaker slot
//!     is not an attempt's.
//! 12. `propagate`: rewrites the deadline headers per attempt with the time
//!     actually left, so the next hop gets a shrinking budget.
//! 13. `attempt`: one trace span per attempt, whose context goes upstream, so
//!     retries show as separate children of the outbound span.
//! 14. `endpoint`: outlier-aware pick avoiding endpoints earlier attempts
//!     tried, forwards through the pool, reports the outcome for outlier
//!     detection and peak-EWMA.
//!
//! Inbound (a peer calls the local workload): `observe` (the server span,
//! the workload sees it as its parent; metrics with the peer's identity);
//! `path`, so authorization judges (and the workload gets) the normalized
//! path; `authz`, the local workload's authorization policies against the caller's
//! mutual TLS identity (below `observe`, so a 403 `RBAC` is counted, traced
//! and logged; above the rest, so a denied request costs nothing more);
//! `deadline` and `propagate`, so work for a caller that gave up is cancelled and the
//! workload sees the budget left; then `local`, which forwards to the
//! workload port the connection was opened for.

use crate::body::{self, Body};
use crate::cluster::{Destination, InFlight, Selection};
use crate::error::ProxyError;
use crate::observe::{Observe, ObservedService, Side};
use crate::original_dst::OriginalDst;
use crate::policy::authz::{AuthzLayer, PolicySource};
use crate::policy::circuit_breaker::CircuitBreakerLayer;
use crate::policy::deadline::{DeadlineLayer, PropagateLayer};
use crate::policy::fault::FaultLayer;
use crate::policy::headers::HeaderRewriteLayer;
use crate::policy::mirror::MirrorLayer;
use crate::policy::retry::RetryLayer;
use crate::policy::rewrite::RewriteLayer;
use crate::policy::timeout::{PerTryTimeoutLayer, RequestTimeout, TimeoutLayer};
use crate::protocol::http as h;
use crate::snapshot::ConfigStore;
use crate::telemetry::{Metrics, ResilienceMetrics};
use crate::tls::PeerIdentity;
use crate::trace::attempt::AttemptLayer;
use crate::upstream::{Target, Upstream};
use bytes::Bytes;
use futures::future::{self, BoxFuture, Either, Ready};
use http::{Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use sane_xds_proto::Protocol;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

pub use crate::svc::{serve, HttpSvc};

/// Request header telling the workload the caller's verified SPIFFE id.
pub const PEER_IDENTITY_HEADER: &str = "x-sane-peer-identity";
/// [`PEER_IDENTITY_HEADER`] parsed once (a `&str` name is parsed per use).
const PEER_IDENTITY: http::HeaderName = http::HeaderName::from_static(PEER_IDENTITY_HEADER);

/// What every stack needs.
#[derive(Clone, Debug)]
pub struct StackContext {
    /// Current config.
    pub config: Arc<ConfigStore>,
    /// Connection pools.
    pub upstream: Arc<Upstream>,
    /// Metrics.
    pub metrics: Metrics,
    /// The proxy's workload identity (mutual TLS).
    pub identity: Arc<crate::tls::Identity>,
    /// Tracks tasks that outlive their request (upgraded tunnels), so a
    /// drain waits for them.
    pub drain: crate::drain::Drain,
    /// Span export and access logs.
    pub tracer: Arc<crate::trace::Tracer>,
    /// The proxy's own listening sockets, which the inbound never
    /// delivers to.
    pub own_sockets: Arc<crate::workload_port::OwnSockets>,
}

/// Builds the outbound stack, in the order (and for the reasons) the module
/// documentation lists.
pub fn outbound(ctx: StackContext) -> HttpSvc {
    let resilience = &ctx.metrics.resilience;
    let svc = ServiceBuilder::new()
        .layer_fn(|inner| Observe {
            inner,
            metrics: Arc::new(ctx.metrics.clone()),
            tracer: ctx.tracer.clone(),
            config: ctx.config.clone(),
            identity: ctx.identity.clone(),
            side: Side::Outbound,
            labels: Default::default(),
        })
        .layer_fn(|inner| PathStage {
            inner,
            config: ctx.config.clone(),
        })
        .layer_fn(|inner| RouteStage {
            inner,
            config: ctx.config.clone(),
        })
        .layer(FaultLayer::new(resilience.clone()))
        .layer(HeaderRewriteLayer)
        .layer(RewriteLayer)
        .layer(MirrorLayer::new(resilience.clone()))
        .layer(TimeoutLayer)
        .layer(DeadlineLayer)
        .layer(RetryLayer::new(resilience.clone()))
        .layer(CircuitBreakerLayer::new(resilience.clone()))
        .layer(PerTryTimeoutLayer)
        .layer(PropagateLayer)
        .layer(AttemptLayer)
        .service(EndpointStage {
            drain: ctx.drain.clone(),
            upstream: ctx.upstream.clone(),
            metrics: resilience.clone(),
        });
    BoxCloneSyncService::new(svc)
}

/// Builds the inbound stack for a connection to workload `ip:port` from a
/// peer that proved `peer` over mutual TLS (`None`: plaintext). Pooled
/// HTTP/1.1 connections to the workload are closed after `upstream_idle`
/// (below the workload's keep-alive, see `ConnectionLimits`).
pub fn inbound(
    ctx: StackContext,
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    service: String,
    peer: Option<PeerIdentity>,
    upstream_idle: Duration,
) -> HttpSvc {
    let svc = ServiceBuilder::new()
        .layer_fn(|inner| Observe {
            inner,
            metrics: Arc::new(ctx.metrics.clone()),
            tracer: ctx.tracer.clone(),
            config: ctx.config.clone(),
            identity: ctx.identity.clone(),
            side: Side::Inbound {
                service: service.as_str().into(),
                protocol,
                peer: peer.clone(),
            },
            labels: Default::default(),
        })
        .layer_fn(|inner| PathStage {
            inner,
            config: ctx.config.clone(),
        })
        .layer({
            let config = ctx.config.clone();
            let policies: PolicySource = Arc::new(move || config.load().authz.clone());
            AuthzLayer::new(policies, peer.clone(), port, ctx.metrics.authz.clone())
        })
        .layer(DeadlineLayer)
        .layer(PropagateLayer)
        .service(LocalStage {
            drain: ctx.drain.clone(),
            upstream: ctx.upstream.clone(),
            target: Target {
                addr: (ip, port).into(),
                via_sidecar: None,
                protocol,
                preserve_http1: false,
                connect_timeout: Duration::from_secs(1),
                idle_timeout: upstream_idle,
                identity: "".into(),
            },
            // Built once per connection, not per request.
            peer_header: (peer.as_ref())
                .and_then(|PeerIdentity(id)| http::HeaderValue::from_str(id).ok()),
        });
    BoxCloneSyncService::new(svc)
}

// === PathStage ===

/// Normalizes the request path under the snapshot's
/// `http.path_normalization` (see [`crate::protocol::path`]); a path it
/// refuses is a `400 DPE` at once. The gateway runs it before its own
/// routes too.
#[derive(Clone, Debug)]
pub struct PathStage<S> {
    /// The stage below.
    pub inner: S,
    /// Where the setting is read, per request.
    pub config: Arc<ConfigStore>,
}

impl<S> Service<Request<Body>> for PathStage<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    /// The stage below, or at once the `400` of a refused path.
    type Future = Either<S::Future, Ready<Result<Response<Body>, ProxyError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let cfg = self.config.load().bootstrap.http.path_normalization;
        match normalize_path(&mut req, &cfg) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(e) => Either::Right(future::ready(Err(e))),
        }
    }
}

/// Replaces the request's path with its normalized form (the query is
/// kept as it came).
pub fn normalize_path<B>(
    req: &mut Request<B>,
    cfg: &sane_xds_proto::PathNormalization,
) -> Result<(), ProxyError> {
    let bad = |reason: String| ProxyError::BadRequest { reason };
    let path = match crate::protocol::path::normalize(req.uri().path(), cfg) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(e) => return Err(bad(e.to_string())),
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query =
        Some(http::uri::PathAndQuery::try_from(pq).map_err(|e| bad(e.to_string()))?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

// === RouteStage ===

#[derive(Clone, Debug)]
struct RouteStage<S> {
    inner: S,
    config: Arc<ConfigStore>,
}

impl<S> Service<Request<Body>> for RouteStage<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    /// The stack below, or at once the error of a request with no route.
    type Future = Either<S::Future, Ready<Result<Response<Body>, ProxyError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let routed = (|| {
            let snapshot = self.config.load();
            let target = h::target_ref(&req);
            let original = req.extensions().get::<OriginalDst>().map(|d| d.0);
            let authority = h::authority_text(&req)
                .or_else(|| original.map(|dst| dst.to_string()))
                .unwrap_or_default();
            let by_host = (target.as_ref().ok())
                .and_then(|(host, port)| snapshot.routes.resolve(host, *port));
            // A transparently intercepted request whose Host names no service
            // (an IP, or none at all) goes where its connection was going.
            let by_dst = || original.and_then(|dst| snapshot.transparent.http_route(dst));
            let Some(route) = by_host.or_else(by_dst) else {
                target?;
                return Err(ProxyError::NoRoute { authority });
            };
            if let Some(obs) = req.extensions().get::<ObservedService>() {
                *obs.0.lock().expect("not poisoned") =
                    Some((route.service.clone(), route.protocol));
            }
            let selected = route.select(&req)?;
            Ok::<_, ProxyError>((selected, authority))
        })();
        match routed {
            Err(e) => Either::Right(future::ready(Err(e))),
            Ok((selected, authority)) => {
                if let Some(t) = selected.timeout {
                    req.extensions_mut().insert(RequestTimeout(t));
                }
                selected.policies.insert_into(req.extensions_mut());
                Destination {
                    cluster: selected.cluster,
                    authority,
                }
                .insert_into(req.extensions_mut());
                Either::Left(self.inner.call(req))
            }
        }
    }
}

// === EndpointStage ===

#[derive(Clone, Debug)]
struct EndpointStage {
    drain: crate::drain::Drain,
    upstream: Arc<Upstream>,
    metrics: ResilienceMetrics,
}

impl Service<Request<Body>> for EndpointStage {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let upstream = self.upstream.clone();
        let metrics = self.metrics.clone();
        let drain = self.drain.clone();
        Box::pin(async move {
            let Destination { cluster, authority } = req
                .extensions_mut()
                .remove::<Destination>()
                .expect("route stage runs first");
            let Selection {
                endpoint,
                in_flight,
                attempt,
            } = cluster.select(&req, &metrics)?;
            let target = Target {
                addr: endpoint.connect_addr,
                via_sidecar: endpoint.via_sidecar,
                protocol: cluster.protocol,
                preserve_http1: cluster.preserve_http1,
                connect_timeout: cluster.connect_timeout,
                idle_timeout: cluster.idle_timeout,
                identity: endpoint.identity.clone(),
            };
            let result =
                forward(&upstream, &drain, req, &target, &authority, Some(in_flight)).await;
            cluster.finish(attempt, result.as_ref().map(|r| r.status()), &metrics);
            result
        })
    }
}

// === LocalStage ===

#[derive(Clone, Debug)]
struct LocalStage {
    drain: crate::drain::Drain,
    upstream: Arc<Upstream>,
    target: Target,
    /// The caller's verified SPIFFE id as the header value the workload
    /// gets (`None`: plaintext, or an id that is no valid header value).
    peer_header: Option<http::HeaderValue>,
}

impl Service<Request<Body>> for LocalStage {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let upstream = self.upstream.clone();
        let drain = self.drain.clone();
        let target = self.target.clone();
        // The workload learns who called it from this header; a value sent
        // by the client itself is never trusted.
        match &self.peer_header {
            Some(v) => req.headers_mut().insert(PEER_IDENTITY, v.clone()),
            None => req.headers_mut().remove(PEER_IDENTITY),
        };
        Box::pin(async move {
            let authority = h::authority_text(&req).unwrap_or_else(|| format!("{}", target.addr));
            forward(&upstream, &drain, req, &target, &authority, None).await
        })
    }
}

/// Sends `req` to `target`; splices the two sides together when the request
/// upgrades the connection (in a task the drain waits for); keeps `guard`
/// alive until the response body ends.
async fn forward(
    upstream: &Upstream,
    drain: &crate::drain::Drain,
    mut req: Request<Body>,
    target: &Target,
    authority: &str,
    guard: Option<InFlight>,
) -> Result<Response<Body>, ProxyError> {
    let downstream_upgrade = h::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let mut rsp = upstream.send(req, target, authority).await?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = downstream_upgrade {
            let up = hyper::upgrade::on(&mut rsp);
            drain.spawn(splice(down, up, guard));
            let (parts, _) = rsp.into_parts();
            let mut rsp = Response::from_parts(parts, body::empty());
            *rsp.version_mut() = Version::HTTP_11;
            return Ok(rsp);
        }
    }
    h::strip_hop_by_hop(rsp.headers_mut(), false);
    Ok(rsp.map(|b| {
        body::boxed(GuardedBody {
            inner: b,
            _guard: guard,
        })
    }))
}

async fn splice(
    down: hyper::upgrade::OnUpgrade,
    up: hyper::upgrade::OnUpgrade,
    _guard: Option<InFlight>,
) {
    match tokio::try_join!(down, up) {
        Ok((d, u)) => {
            let mut d = hyper_util::rt::TokioIo::new(d);
            let mut u = hyper_util::rt::TokioIo::new(u);
            if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

/// A response body that keeps its endpoint counted as busy until it ends.
struct GuardedBody {
    inner: crate::upstream::UpstreamBody,
    _guard: Option<InFlight>,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::body::BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
