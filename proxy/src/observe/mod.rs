//! The `observe` stage, outermost in both stacks: it sees every request's
//! final outcome (errors included, already turned into responses) and
//! reports it three ways: Istio metrics, this hop's trace span, and the
//! access log.
//!
//! The report is made when the response *ends*, not when its headers
//! arrive: [`body::ObservedBody`] wraps the response body, counts the bytes
//! really sent, reads `grpc-status` from the trailers (where gRPC servers
//! put it; a trailers-only response has it in the headers), and fires the
//! report on the last frame, on an error (flag `UR`) or when the body is
//! dropped early (the caller went away: flag `DC`). The request body is
//! counted by [`body::CountingBody`] on its way upstream.
//!
//! It also starts the hop's trace: the context that arrived (W3C or B3) is
//! continued, a new one started otherwise, and `x-request-id` generated when
//! missing. Inbound, the workload sees the server span as its parent;
//! outbound, the context goes into the request's extensions and
//! [`crate::trace::attempt`] writes each attempt's context upstream.
//!
//! Proxied TCP connections get their access-log line from [`tcp::TcpLog`].
//!
//! Peer metadata: inbound, the caller's workload name arrives in
//! [`SOURCE_WORKLOAD_HEADER`] and the local one goes back in
//! [`DESTINATION_WORKLOAD_HEADER`]; each side trusts the other's header
//! only over mutual TLS and removes it before the workload sees it.
//! Outbound, `destination_principal` is the SPIFFE id the upstream proved on
//! the connection the response came over ([`UpstreamPeer`]).

pub mod body;
mod peer;
pub(crate) mod tcp;

use self::body::{BodyEnd, BodyOutcome, ByteCount, CountingBody, ObservedBody};
use self::peer::PeerMeta;
use crate::access_log::AccessLog;
use crate::body::Body;
use crate::error::{ProxyError, RESPONSE_FLAGS_HEADER};
use crate::protocol::http as h;
use crate::route::ServiceName;
use crate::snapshot::ConfigStore;
use crate::telemetry::{Metrics, Outcome, RequestLabels, RequestSizes, RouteSeries};
use crate::tls::{Identity, PeerIdentity, TlsMaterial};
use crate::trace::context::{ensure_request_id, RequestId};
use crate::trace::{method_text, version_text, HopKind, SpanOutcome, TraceHop, Tracer};
use crate::upstream::UpstreamPeer;
use futures::future::BoxFuture;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use sane_xds_proto::Protocol;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use tower::Service;

/// Request header carrying the calling workload's name from its outbound
/// sidecar to the peer's inbound sidecar (trusted only over mutual TLS,
/// never passed to the workload).
pub const SOURCE_WORKLOAD_HEADER: &str = "x-sane-source-workload";

/// Response header carrying the called workload's name from its inbound
/// sidecar back to the caller's outbound sidecar (sent only to a caller
/// that proved its identity, trusted only from an upstream that proved
/// its own, never passed to the calling app).
pub const DESTINATION_WORKLOAD_HEADER: &str = "x-sane-destination-workload";

/// [`SOURCE_WORKLOAD_HEADER`] as a name (looked up without parsing it).
const SOURCE_WORKLOAD: HeaderName = HeaderName::from_static(SOURCE_WORKLOAD_HEADER);
/// [`DESTINATION_WORKLOAD_HEADER`] as a name.
const DESTINATION_WORKLOAD: HeaderName = HeaderName::from_static(DESTINATION_WORKLOAD_HEADER);
/// [`RESPONSE_FLAGS_HEADER`] as a name.
const RESPONSE_FLAGS: HeaderName = HeaderName::from_static(RESPONSE_FLAGS_HEADER);
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Labels the route stage learned, for the observe stage above it.
#[derive(Clone, Debug, Default)]
pub(crate) struct ObservedService(pub(crate) Arc<Mutex<Option<(ServiceName, Protocol)>>>);

/// The label values an exchange would otherwise build per request (the
/// local workload and identity, the peers' claimed workload names), kept
/// as shared strings: a request clones an `Arc` where it allocated a
/// `String`. Each entry is checked against its source (the config
/// snapshot, the current certificate, the header) and rebuilt when it
/// differs. Shared by every clone of one [`Observe`].
#[derive(Debug)]
pub(crate) struct LabelCache {
    unknown: Arc<str>,
    unknown_peer: Arc<PeerMeta>,
    entries: Mutex<LabelEntries>,
}

#[derive(Debug, Default)]
struct LabelEntries {
    /// The local workload's labels and their header value, for the node
    /// they were built from.
    local: Option<(sane_xds_proto::Node, Arc<PeerMeta>, Option<HeaderValue>)>,
    /// The SPIFFE id of the current certificate.
    own: Option<(Arc<TlsMaterial>, Arc<str>)>,
    /// The last peer metadata header a peer sent, as parsed by
    /// [`PeerMeta::parse`].
    claimed: Option<(HeaderValue, Arc<PeerMeta>)>,
    /// The request series of the last [`SERIES_KEPT`] routes and peers,
    /// oldest first.
    series: Vec<(SeriesKey, Arc<RouteSeries>)>,
}

/// How many routes and peers' request series a [`LabelCache`] keeps (an
/// inbound connection has one peer and usually one service; an outbound
/// listener's requests go to a few destinations at a time).
const SERIES_KEPT: usize = 8;

/// What decides an exchange's metric labels, all but the outcome. Every
/// part is built once (per config, certificate, connection or header
/// value) and shared, so two keys holding the same `Arc`s have the same
/// labels: comparing pointers finds the series without reading a label
/// string. (Equal labels behind other `Arc`s only miss, and resolve to the
/// same series by value.) The key holds its `Arc`s, so an address is never
/// reused while it is kept.
#[derive(Clone, Debug)]
struct SeriesKey {
    inbound: bool,
    grpc: bool,
    policy: &'static str,
    source: Arc<PeerMeta>,
    source_principal: Arc<str>,
    destination: Arc<PeerMeta>,
    destination_principal: Arc<str>,
    service: Option<ServiceName>,
}

/// Which side of a hop the stage observes.
#[derive(Clone, Debug)]
pub(crate) enum Side {
    /// The local app's requests.
    Outbound,
    /// A peer's requests for the local workload `service` (`name.namespace`).
    Inbound {
        service: ServiceName,
        protocol: Protocol,
        peer: Option<PeerIdentity>,
    },
}

/// The observe stage.
#[derive(Clone, Debug)]
pub(crate) struct Observe<S> {
    pub(crate) inner: S,
    /// Shared: each exchange keeps a handle until its response ends, and
    /// one `Arc` is one count, where cloning `Metrics` is one per metric.
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tracer: Arc<Tracer>,
    pub(crate) config: Arc<ConfigStore>,
    pub(crate) identity: Arc<Identity>,
    pub(crate) side: Side,
    pub(crate) labels: Arc<LabelCache>,
}

/// Everything known about one exchange once its response headers are in;
/// reported when the response body ends.
struct Exchange {
    metrics: Arc<Metrics>,
    labels: Arc<LabelCache>,
    hop: TraceHop,
    inbound: bool,
    source: Arc<PeerMeta>,
    source_principal: Arc<str>,
    destination: Arc<PeerMeta>,
    destination_principal: Arc<str>,
    /// Inbound: the local workload's name as a header value, sent back to
    /// a caller that proved its identity.
    workload_header: Option<HeaderValue>,
    policy: &'static str,
    /// `None` until the route stage resolved it (label `unknown`).
    service: Option<ServiceName>,
    grpc: bool,
    /// `grpc-status` of a trailers-only response.
    header_grpc_status: Option<HeaderValue>,
    status: u16,
    /// Response flags, `-` (static, no allocation) when none.
    flags: Cow<'static, str>,
    method: Method,
    /// The request's target as it came (a clone shares its bytes): the
    /// path, and the authority when it names one.
    uri: http::Uri,
    /// The `Host` header, when the target names no authority (HTTP/1).
    host: Option<HeaderValue>,
    version: Version,
    request_id: RequestId,
    start: Instant,
    wall: SystemTime,
    request_bytes: ByteCount,
    peer: Option<Arc<str>>,
}

// === impl Observe ===

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let wall = SystemTime::now();
        let snapshot = self.config.load();
        let active = self.tracer.active(&snapshot.telemetry);
        let labels = &self.labels;
        let (workload, workload_header) = labels.local(&snapshot.bootstrap.node);
        // Inbound, the service called is the one the request's authority
        // names (as Istio's destination reporter has it), resolved in the
        // snapshot's table like the outbound route stage does; the local
        // workload's own service when it names none.
        let called = match &self.side {
            Side::Inbound { .. } => h::target_ref(&req)
                .ok()
                .and_then(|(host, port)| snapshot.routes.resolve(&host, port))
                .map(|r| r.service.clone()),
            Side::Outbound => None,
        };
        drop(snapshot);
        let hop = active.start_hop(req.headers());
        let request_id = ensure_request_id(req.headers_mut());
        let own_id = labels.own(self.identity.current());
        let version = req.version();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let host = match uri.authority() {
            Some(_) => None,
            None => req.headers().get(http::header::HOST).cloned(),
        };
        let request_bytes = ByteCount::default();
        let counted = request_bytes.clone();
        let mut req = req.map(|b| CountingBody::new(b, counted).boxed_unsync());
        let mut grpc = h::is_grpc(req.headers());
        let (source, source_principal, destination, dest_principal, policy);
        // Inbound, the service is known here; outbound, the route stage
        // below learns it (`observed`).
        let (service, observed);
        let inbound_peer = match &self.side {
            Side::Inbound { peer, .. } => peer.clone(),
            Side::Outbound => None,
        };
        match &self.side {
            Side::Inbound {
                peer,
                service: own,
                protocol,
            } => {
                service = Some(called.unwrap_or_else(|| own.clone()));
                grpc = grpc || *protocol == Protocol::Grpc;
                observed = None;
                // The workload continues the trace as a child of this span.
                hop.context.inject(req.headers_mut());
                let claimed = req.headers_mut().remove(SOURCE_WORKLOAD);
                source = match (peer, claimed) {
                    (Some(_), Some(v)) => labels.claimed(v),
                    _ => labels.unknown_peer.clone(),
                };
                source_principal = peer
                    .as_ref()
                    .map_or_else(|| labels.unknown.clone(), |p| p.0.clone());
                destination = workload.clone();
                dest_principal = own_id.unwrap_or_else(|| labels.unknown.clone());
                policy = if peer.is_some() { "mutual_tls" } else { "none" };
            }
            Side::Outbound => {
                if let Some(v) = &workload_header {
                    req.headers_mut().insert(SOURCE_WORKLOAD, v.clone());
                }
                req.extensions_mut().insert(hop.clone());
                source = workload.clone();
                source_principal = own_id.unwrap_or_else(|| labels.unknown.clone());
                // Learned from the response (see `Exchange::learn_peer`).
                destination = labels.unknown_peer.clone();
                dest_principal = labels.unknown.clone();
                policy = "unknown";
                service = None;
                let learned = ObservedService::default();
                req.extensions_mut().insert(learned.clone());
                observed = Some(learned);
            }
        }
        let fut = self.inner.call(req);
        // Recorded as a downstream disconnect (status 0, flag `DC`) if this
        // future is dropped before the response headers are in: the caller
        // closed its connection or reset its stream. Once the headers are
        // in, the exchange moves into the response body, which records it
        // (exactly one of the two ever fires).
        let mut pending = Pending {
            exchange: Some(Exchange {
                metrics: self.metrics.clone(),
                labels: self.labels.clone(),
                hop,
                inbound: matches!(self.side, Side::Inbound { .. }),
                source,
                source_principal,
                destination,
                destination_principal: dest_principal,
                workload_header: workload_header.filter(|_| inbound_peer.is_some()),
                policy,
                service,
                grpc,
                header_grpc_status: None,
                status: 0,
                flags: Cow::Borrowed("-"),
                method,
                uri,
                host,
                version,
                request_id,
                start,
                wall,
                request_bytes,
                peer: inbound_peer.map(|p| p.0),
            }),
            observed,
        };
        Box::pin(async move {
            let (mut rsp, error) = match fut.await {
                Ok(rsp) => (rsp, None),
                Err(e) => (e.to_response(), Some(e)),
            };
            let mut exchange = pending.take();
            if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
                *rsp.version_mut() = exchange.version;
            }
            if let Some(flags) = header_text(rsp.headers(), &RESPONSE_FLAGS) {
                exchange.flags = Cow::Owned(flags.to_string());
            }
            exchange.status = rsp.status().as_u16();
            exchange.header_grpc_status = rsp.headers().get(&GRPC_STATUS).cloned();
            if let Some(e) = &error {
                tracing::warn!(
                    method = %exchange.method, path = %exchange.uri.path(),
                    status = exchange.status, flags = %exchange.flags, error = %e,
                    "request failed"
                );
            }
            if exchange.inbound {
                // Only a caller that proved who it is learns who answered.
                rsp.headers_mut().remove(&DESTINATION_WORKLOAD);
                if let Some(v) = exchange.workload_header.take() {
                    rsp.headers_mut().insert(DESTINATION_WORKLOAD, v);
                }
            } else {
                exchange.learn_peer(&mut rsp);
            }
            Ok(rsp.map(|b| {
                ObservedBody::new(b, move |outcome| exchange.finish(outcome)).boxed_unsync()
            }))
        })
    }
}

/// An exchange whose response headers are not in yet; see [`Observe`]'s
/// `call`.
struct Pending {
    exchange: Option<Exchange>,
    /// Outbound: where the route stage puts the service it resolved.
    observed: Option<ObservedService>,
}

// === impl Pending ===

impl Pending {
    /// The exchange, with the service the route stage learned; from now on
    /// the response body records it.
    fn take(&mut self) -> Exchange {
        let mut exchange = self.exchange.take().expect("taken once");
        if let Some(observed) = &self.observed {
            exchange.learn_service(observed);
        }
        exchange
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut exchange) = self.exchange.take() {
            if let Some(observed) = &self.observed {
                exchange.learn_service(observed);
            }
            exchange.finish(BodyOutcome {
                end: BodyEnd::Dropped,
                bytes: 0,
                grpc_status: None,
            });
        }
    }
}

// === impl LabelCache ===

impl Default for LabelCache {
    fn default() -> Self {
        Self {
            unknown: "unknown".into(),
            unknown_peer: Arc::new(PeerMeta::unknown()),
            entries: Mutex::default(),
        }
    }
}

impl LabelCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, LabelEntries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The local workload's labels (built once per node config) and their
    /// header value.
    fn local(&self, node: &sane_xds_proto::Node) -> (Arc<PeerMeta>, Option<HeaderValue>) {
        let mut entries = self.entries();
        match &entries.local {
            Some((seen, meta, header)) if seen == node => (meta.clone(), header.clone()),
            _ => {
                let meta = Arc::new(PeerMeta::local(node));
                let header = meta.header();
                entries.local = Some((node.clone(), meta.clone(), header.clone()));
                (meta, header)
            }
        }
    }

    /// The SPIFFE id of `current`, rendered once per certificate.
    fn own(&self, current: Option<Arc<TlsMaterial>>) -> Option<Arc<str>> {
        let current = current?;
        let mut entries = self.entries();
        match &entries.own {
            Some((material, id)) if Arc::ptr_eq(material, &current) => Some(id.clone()),
            _ => {
                let id = Arc::<str>::from(current.identity.identity().to_string());
                entries.own = Some((current, id.clone()));
                Some(id)
            }
        }
    }

    /// A peer's metadata header, parsed once per distinct value.
    fn claimed(&self, v: HeaderValue) -> Arc<PeerMeta> {
        let mut entries = self.entries();
        match &entries.claimed {
            Some((seen, meta)) if *seen == v => meta.clone(),
            _ => {
                let meta = Arc::new(PeerMeta::parse(&v));
                entries.claimed = Some((v, meta.clone()));
                meta
            }
        }
    }

    /// The request series of `key`'s route and peer: kept from an earlier
    /// exchange with the same key, else resolved by its labels (and kept).
    fn series(&self, metrics: &Metrics, key: &SeriesKey) -> Arc<RouteSeries> {
        if let Some((_, series)) = self.entries().series.iter().find(|(k, _)| k.same(key)) {
            return series.clone();
        }
        let service = key.service.as_ref();
        let unknown = &*self.unknown;
        let service_name = service.map_or(unknown, ServiceName::name);
        let service_namespace = service.map_or(unknown, ServiceName::namespace);
        let host = service.map(ServiceName::host);
        let host = host.as_deref().unwrap_or(unknown);
        let (source, destination) = (&key.source, &key.destination);
        let series = metrics.route_series(&RequestLabels {
            reporter: if key.inbound { "destination" } else { "source" },
            source_workload: &source.workload,
            source_principal: &key.source_principal,
            destination_workload: &destination.workload,
            destination_service: host,
            destination_principal: &key.destination_principal,
            request_protocol: if key.grpc { "grpc" } else { "http" },
            // The outcome is not read.
            response_code: 0,
            grpc_response_status: "",
            connection_security_policy: key.policy,
            response_flags: "",
            source_workload_namespace: &source.namespace,
            source_canonical_service: &source.canonical_service,
            source_canonical_revision: &source.canonical_revision,
            source_app: &source.app,
            source_version: &source.version,
            destination_workload_namespace: &destination.namespace,
            destination_service_name: service_name,
            destination_service_namespace: service_namespace,
            destination_canonical_service: &destination.canonical_service,
            destination_canonical_revision: &destination.canonical_revision,
            destination_app: &destination.app,
            destination_version: &destination.version,
        });
        let mut entries = self.entries();
        if entries.series.len() == SERIES_KEPT {
            entries.series.remove(0);
        }
        entries.series.push((key.clone(), series.clone()));
        series
    }
}

// === impl SeriesKey ===

impl SeriesKey {
    /// The same route and peer: the same shared values (see the type's
    /// docs).
    fn same(&self, other: &SeriesKey) -> bool {
        let service = match (&self.service, &other.service) {
            (Some(a), Some(b)) => a.same(b),
            (None, None) => true,
            _ => false,
        };
        service
            && self.inbound == other.inbound
            && self.grpc == other.grpc
            && self.policy == other.policy
            && Arc::ptr_eq(&self.source, &other.source)
            && Arc::ptr_eq(&self.source_principal, &other.source_principal)
            && Arc::ptr_eq(&self.destination, &other.destination)
            && Arc::ptr_eq(&self.destination_principal, &other.destination_principal)
    }
}

// === impl Exchange ===

impl Exchange {
    /// The service (and so the protocol) the route stage resolved, if it
    /// got that far.
    fn learn_service(&mut self, observed: &ObservedService) {
        if let Some((service, protocol)) = observed.0.lock().expect("not poisoned").clone() {
            self.service = Some(service);
            self.grpc = self.grpc || protocol == Protocol::Grpc;
        }
    }

    /// Outbound: the destination's identity from the mutual TLS connection
    /// the response came over, and its workload name from the header its
    /// sidecar sent back (trusted only over that connection).
    fn learn_peer(&mut self, rsp: &mut Response<Body>) {
        let claimed = rsp.headers_mut().remove(&DESTINATION_WORKLOAD);
        if let Some(UpstreamPeer(PeerIdentity(id))) = rsp.extensions().get::<UpstreamPeer>() {
            self.destination_principal = id.clone();
            if let Some(v) = claimed {
                self.destination = self.labels.claimed(v);
            }
        }
    }

    /// Reports the finished exchange: metrics (into the series kept for
    /// its route and peer), access log, span. The access log and the span
    /// copy the strings they need, each only when it is on.
    fn finish(self, outcome: BodyOutcome) {
        let Exchange {
            metrics,
            labels,
            hop,
            inbound,
            source,
            source_principal,
            destination,
            destination_principal,
            workload_header: _,
            policy,
            service,
            grpc,
            header_grpc_status,
            status,
            flags,
            method,
            uri,
            host,
            version,
            request_id,
            start,
            wall,
            request_bytes,
            peer,
        } = self;
        let millis = start.elapsed().as_secs_f64() * 1000.0;
        let unflagged = flags == "-";
        let flags = match outcome.end {
            BodyEnd::Failed if unflagged => Cow::Borrowed("UR"),
            BodyEnd::Dropped if unflagged => Cow::Borrowed("DC"),
            _ => flags,
        };
        let grpc_status = if grpc {
            grpc_code(outcome.grpc_status.as_ref().or(header_grpc_status.as_ref()))
        } else {
            ""
        };
        let sizes = RequestSizes {
            request: request_bytes.get(),
            response: outcome.bytes,
        };
        let key = SeriesKey {
            inbound,
            grpc,
            policy,
            source,
            source_principal,
            destination,
            destination_principal,
            service,
        };
        let outcome = Outcome {
            response_code: status,
            grpc_response_status: grpc_status,
            response_flags: &flags,
        };
        labels.series(&metrics, &key).record(outcome, millis, sizes);
        let service: &str = key.service.as_ref().map_or(&labels.unknown, |s| s.key());
        let protocol_version = version_text(version);
        let path = uri.path();
        let authority = match uri.authority() {
            Some(a) => a.as_str(),
            None => host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
        };
        hop.active().log(|| AccessLog {
            start_time: humantime::format_rfc3339_millis(wall).to_string(),
            direction: if inbound { "inbound" } else { "outbound" },
            trace_id: hop.context.trace_id.to_string(),
            request_id: request_id.to_string(),
            method: method.to_string(),
            authority: authority.to_string(),
            path: path.to_string(),
            protocol: protocol_version.to_string(),
            status,
            grpc_status: grpc_status.to_string(),
            response_flags: flags.to_string(),
            duration_ms: millis,
            bytes_received: sizes.request,
            bytes_sent: sizes.response,
            upstream_service: service.to_string(),
            upstream_host: String::new(),
            source_principal: key.source_principal.to_string(),
            destination_principal: key.destination_principal.to_string(),
        });
        tracing::debug!(
            method = %method, path = %path, status, flags = %flags,
            elapsed_ms = millis as u64, "request"
        );
        // The span's strings are built only for a span that is recorded.
        if hop.recording() {
            let kind = if inbound {
                HopKind::Inbound
            } else {
                HopKind::Outbound
            };
            let span = SpanOutcome {
                method: method_text(&method),
                path: path.to_string().into(),
                authority: authority.to_string().into(),
                status,
                flags,
                service: service.to_string().into(),
                peer_identity: peer,
                protocol_version,
                request_id: request_id.to_string().into(),
                grpc_status: Some(grpc_status).filter(|s| !s.is_empty()),
                bytes: Some(sizes),
                attempt: None,
            };
            hop.record(kind, &hop.context, wall, span);
        }
    }
}

/// The gRPC status label: a code as sent (`0`–`16`), `unknown` for any
/// other value (a peer cannot inflate label cardinality), empty when none
/// was sent.
fn grpc_code(v: Option<&HeaderValue>) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    let Some(v) = v else { return "" };
    (v.to_str().ok())
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|n| CODES.get(n).copied())
        .unwrap_or("unknown")
}

fn header_text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_workload_is_bounded() {
        let ok = HeaderValue::from_static("web-1");
        let cache = LabelCache::default();
        assert_eq!(&*cache.claimed(ok.clone()).workload, "web-1");
        for bad in ["", "UPPER", "a/b", &"x".repeat(64)] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert_eq!(&*cache.claimed(v).workload, "unknown");
        }
        assert_eq!(
            &*cache.claimed(ok).workload,
            "web-1",
            "a new claim replaces the last"
        );
    }

    #[test]
    fn kept_series_follow_the_route_and_peer() {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        let cache = LabelCache::default();
        let key = |source: Arc<PeerMeta>| SeriesKey {
            inbound: true,
            grpc: false,
            policy: "mutual_tls",
            source,
            source_principal: cache.unknown.clone(),
            destination: cache.unknown_peer.clone(),
            destination_principal: cache.unknown.clone(),
            service: None,
        };
        let web1 = cache.claimed(HeaderValue::from_static("web-1"));
        let first = cache.series(&metrics, &key(web1.clone()));
        assert!(Arc::ptr_eq(&first, &cache.series(&metrics, &key(web1))));
        let web2 = cache.claimed(HeaderValue::from_static("web-2"));
        let second = cache.series(&metrics, &key(web2));
        assert!(!Arc::ptr_eq(&first, &second), "another peer");
        let ok = Outcome {
            response_code: 200,
            grpc_response_status: "",
            response_flags: "-",
        };
        first.record(ok, 1.0, RequestSizes::default());
        second.record(ok, 1.0, RequestSizes::default());
        second.record(ok, 1.0, RequestSizes::default());
        let families = registry.gather();
        let family = (families.iter())
            .find(|f| f.name() == "istio_requests_total")
            .unwrap();
        let mut counts: Vec<_> = (family.get_metric().iter())
            .map(|m| {
                let source = (m.get_label().iter())
                    .find(|l| l.name() == "source_workload")
                    .map(|l| l.value().to_string());
                (source.unwrap(), m.get_counter().get_value())
            })
            .collect();
        counts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(
            counts,
            vec![("web-1".to_string(), 1.0), ("web-2".to_string(), 2.0)]
        );
    }

    #[test]
    fn grpc_codes_are_bounded() {
        assert_eq!(grpc_code(None), "");
        assert_eq!(grpc_code(Some(&HeaderValue::from_static("0"))), "0");
        assert_eq!(grpc_code(Some(&HeaderValue::from_static("16"))), "16");
        for bad in ["17", "-1", "ok", "", "99999999999999999999"] {
            assert_eq!(grpc_code(Some(&HeaderValue::from_static(bad))), "unknown");
        }
    }
}

#[cfg(test)]
mod disconnect_tests {
    use super::*;
    use crate::config::Snapshot;
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use prometheus::Registry;
    use tower::ServiceExt;

    /// An `Observe` (outbound) over `inner`, and the registry it records in.
    fn observe<S>(inner: S) -> (Observe<S>, Registry) {
        let registry = Registry::new();
        let snapshot = Snapshot::compile(Default::default(), 1, None, "t").unwrap();
        let identity = Arc::new(Identity::new(
            false,
            crate::tls::TlsMetrics::register(&registry).unwrap(),
        ));
        let svc = Observe {
            inner,
            metrics: Arc::new(Metrics::register(&registry).unwrap()),
            tracer: Arc::new(Tracer::new(&registry).unwrap()),
            config: Arc::new(ConfigStore::new(snapshot, None)),
            identity,
            side: Side::Outbound,
            labels: Default::default(),
        };
        (svc, registry)
    }

    /// `istio_requests_total` as `(response_code, response_flags, count)`.
    fn requests(registry: &Registry) -> Vec<(String, String, f64)> {
        let families = registry.gather();
        let Some(family) = families.iter().find(|f| f.name() == "istio_requests_total") else {
            return Vec::new();
        };
        family
            .get_metric()
            .iter()
            .map(|m| {
                let label = |name: &str| {
                    (m.get_label().iter())
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                (
                    label("response_code"),
                    label("response_flags"),
                    m.get_counter().get_value(),
                )
            })
            .collect()
    }

    fn get() -> Request<Body> {
        Request::get("http://echo/slow")
            .body(crate::body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_caller_gone_before_the_response_headers_is_recorded_once_as_dc_with_status_0() {
        let inner = tower::service_fn(|_: Request<Body>| {
            futures::future::pending::<Result<Response<Body>, ProxyError>>()
        });
        let (svc, registry) = observe(inner);
        let mut call = Box::pin(svc.oneshot(get()));
        // The upstream has not answered.
        assert!(futures::poll!(call.as_mut()).is_pending());
        assert!(requests(&registry).is_empty(), "nothing recorded yet");
        // The caller goes away: hyper drops the service future.
        drop(call);
        assert_eq!(
            requests(&registry),
            vec![("0".to_string(), "DC".to_string(), 1.0)]
        );
    }

    #[tokio::test]
    async fn a_caller_gone_mid_body_is_recorded_once_as_dc_with_the_sent_status() {
        let (tx, rx) =
            futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, crate::body::BodyError>>();
        let body = Arc::new(Mutex::new(Some(StreamBody::new(rx).boxed_unsync())));
        let inner = tower::service_fn(move |_: Request<Body>| {
            let body = body.lock().unwrap().take().unwrap();
            async move { Ok::<_, ProxyError>(Response::new(body)) }
        });
        let (svc, registry) = observe(inner);
        let rsp = svc.oneshot(get()).await.unwrap();
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .unwrap();
        let mut body = rsp.into_body();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        assert!(requests(&registry).is_empty(), "not over yet");
        drop(body);
        assert_eq!(
            requests(&registry),
            vec![("200".to_string(), "DC".to_string(), 1.0)]
        );
    }

    #[tokio::test]
    async fn a_completed_exchange_is_recorded_once_without_flags() {
        let inner = tower::service_fn(|_: Request<Body>| async {
            Ok::<_, ProxyError>(Response::new(crate::body::full("done")))
        });
        let (svc, registry) = observe(inner);
        let rsp = svc.oneshot(get()).await.unwrap();
        let _ = rsp.into_body().collect().await.unwrap();
        assert_eq!(
            requests(&registry),
            vec![("200".to_string(), "-".to_string(), 1.0)]
        );
    }
}
