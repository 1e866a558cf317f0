//! Distributed tracing: every request continues the trace it arrived with
//! (or starts one), and each sidecar records a span for its hop.
//!
//! * [`context`] parses and writes W3C / B3 trace headers.
//! * [`Tracer`] holds the active export settings (swapped when the
//!   `Telemetry` resource changes) and hands out a [`TraceHop`] per request:
//!   inbound it is the server span (and the app sees it as the parent of
//!   whatever it calls next), outbound it is the client span of the whole
//!   request, and [`attempt::AttemptLayer`] records one child span per
//!   attempt (retries included) and writes that attempt's context upstream.
//! * [`export`] batches spans to an OTLP collector from a bounded queue; a
//!   full queue, or an exporter backing off after a failed export, drops
//!   the span *before it is built* and counts it, so export never slows or
//!   fails a request and a collector that is down costs (nearly) nothing.
//!
//! The hot path takes no lock: the settings are compared by pointer with the
//! config snapshot's, spans are only built when sampled and when the queue
//! has room, and queueing is a reserved slot's `send`. A span's attributes
//! are moved in (owned strings) or static (method, protocol version, usual
//! flags): building one copies no request text.
//!
//! Trace context propagation (`traceparent`, B3, `x-request-id`) is
//! independent of export: it happens whether spans are recorded, dropped or
//! not configured.

pub mod attempt;
pub mod context;
pub mod export;
pub mod metrics;

use crate::access_log::{AccessLog, AccessLogQueue};
use crate::trace::context::{SpanId, TraceContext};
use crate::trace::export::{SpanQueue, TraceMetrics};
use arc_swap::ArcSwap;
use http::{Method, Version};
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceFlags, TraceId as OtelTraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use prometheus::Registry;
use sane_xds_proto::{AccessLogConfig, Bootstrap, TracingConfig};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The tracing and access-log settings of one node: the `Telemetry` of its
/// namespace (the first by name).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TelemetrySettings {
    /// Span export; `None`: trace headers are propagated, nothing exported.
    pub tracing: Option<TracingConfig>,
    /// Access logs; `None`: off.
    pub access_log: Option<AccessLogConfig>,
    /// `service.name` of exported spans.
    pub service_name: String,
}

/// Span export and access logging as currently configured.
#[derive(Debug)]
pub struct Tracer {
    active: ArcSwap<Active>,
    reconfigure: Mutex<()>,
    metrics: TraceMetrics,
}

/// What the current settings started: the span queue and the log queue.
#[derive(Debug)]
pub struct Active {
    settings: Arc<TelemetrySettings>,
    spans: Option<SpanQueue>,
    sample_ratio: f64,
    /// The access log, when on.
    pub access_log: Option<AccessLogQueue>,
}

/// One hop's span, in the request's extensions for the layers below.
#[derive(Clone, Debug)]
pub struct TraceHop {
    /// This hop's context; `span_id` is the hop's span.
    pub context: TraceContext,
    /// Attempts made so far (outbound).
    attempts: Arc<AtomicU32>,
    active: Arc<Active>,
}

/// Which side of the hop a span describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopKind {
    /// The inbound sidecar receiving a request for its workload.
    Inbound,
    /// The outbound sidecar sending its app's request.
    Outbound,
    /// One attempt of an outbound request.
    Attempt,
}

/// The outcome and attributes of a finished span. Owned (moved in from
/// the finished exchange, or static), so building the span copies no text;
/// building it at all only happens when the queue takes it.
#[derive(Debug, Default)]
pub struct SpanOutcome {
    /// HTTP method ([`method_text`]).
    pub method: Cow<'static, str>,
    /// Request path (spans may carry it; metrics never do).
    pub path: Cow<'static, str>,
    /// Authority.
    pub authority: Cow<'static, str>,
    /// Response status; 0 when there was none.
    pub status: u16,
    /// Response flags, `-` when none.
    pub flags: Cow<'static, str>,
    /// `name.namespace` of the destination service; empty: not resolved
    /// (attempt spans: their hop's span carries it).
    pub service: Cow<'static, str>,
    /// The verified SPIFFE id of the peer, when known.
    pub peer_identity: Option<Arc<str>>,
    /// `HTTP/1.1`, `HTTP/2`, ... ([`version_text`]).
    pub protocol_version: &'static str,
    /// `x-request-id`; empty: not recorded.
    pub request_id: Cow<'static, str>,
    /// gRPC status code (`rpc.grpc.status_code`), when known.
    pub grpc_status: Option<&'static str>,
    /// Body bytes counted both ways, when the hop saw the whole exchange.
    pub bytes: Option<crate::telemetry::RequestSizes>,
    /// The attempt number (`sane.attempt`), for an attempt's span.
    pub attempt: Option<u32>,
}

// === impl TelemetrySettings ===

impl TelemetrySettings {
    /// The settings `bootstrap` gives its node.
    pub fn for_node(bootstrap: &Bootstrap) -> Self {
        let ns = sane_xds_proto::namespace_or_default(&bootstrap.node.namespace);
        let mut mine: Vec<_> = (bootstrap.resources.telemetry.iter())
            .filter(|t| sane_xds_proto::namespace_or_default(&t.namespace) == ns)
            .collect();
        mine.sort_by(|a, b| a.name.cmp(&b.name));
        let t = mine.first();
        let tracing = t.and_then(|t| t.tracing.clone());
        let service_name = match &tracing {
            Some(c) if !c.service_name.is_empty() => c.service_name.clone(),
            _ if !bootstrap.node.workload.is_empty() => bootstrap.node.workload.clone(),
            _ => "sane-proxy".into(),
        };
        Self {
            tracing,
            access_log: t.and_then(|t| t.access_log.clone()),
            service_name,
        }
    }
}

// === impl Tracer ===

impl Tracer {
    /// A tracer with nothing configured yet; metrics go to `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = TraceMetrics::register(registry)?;
        Ok(Self {
            active: ArcSwap::from_pointee(Active {
                settings: Arc::new(TelemetrySettings::default()),
                spans: None,
                sample_ratio: 0.0,
                access_log: None,
            }),
            reconfigure: Mutex::new(()),
            metrics,
        })
    }

    /// The export state for `settings` (the current snapshot's), starting
    /// new exporters when they changed. Must run inside a tokio runtime.
    pub fn active(&self, settings: &Arc<TelemetrySettings>) -> Arc<Active> {
        let current = self.active.load_full();
        if Arc::ptr_eq(&current.settings, settings) {
            return current;
        }
        // Rare: the Telemetry resource changed. Only one request rebuilds.
        let _guard = self.reconfigure.lock().expect("not poisoned");
        let current = self.active.load_full();
        if Arc::ptr_eq(&current.settings, settings) || *current.settings == **settings {
            if !Arc::ptr_eq(&current.settings, settings) {
                let same = Arc::new(Active {
                    settings: settings.clone(),
                    spans: current.spans.clone(),
                    sample_ratio: current.sample_ratio,
                    access_log: current.access_log.clone(),
                });
                self.active.store(same.clone());
                return same;
            }
            return current;
        }
        let spans = settings.tracing.as_ref().map(|t| {
            tracing::info!(endpoint = %t.endpoint, protocol = ?t.protocol(), "exporting spans");
            SpanQueue::start(t, &settings.service_name, self.metrics.clone())
        });
        let access_log =
            (settings.access_log.as_ref()).map(|a| AccessLogQueue::start(a, self.metrics.clone()));
        let next = Arc::new(Active {
            settings: settings.clone(),
            spans,
            sample_ratio: (settings.tracing.as_ref()).map_or(0.0, |t| t.effective_sampling_ratio()),
            access_log,
        });
        self.active.store(next.clone());
        next
    }
}

// === impl Active ===

impl Active {
    /// Whether a trace this hop starts is sampled (ratio based).
    pub fn sample_new(&self) -> bool {
        self.spans.is_some() && rand::random::<f64>() < self.sample_ratio
    }

    /// Starts the hop's span from the request headers.
    pub fn start_hop(self: &Arc<Self>, headers: &http::HeaderMap) -> TraceHop {
        let context = TraceContext::extract(headers, self.sample_new());
        TraceHop {
            context,
            attempts: Arc::default(),
            active: self.clone(),
        }
    }

    /// Logs one request, sampled per config.
    pub fn log(&self, entry: impl FnOnce() -> AccessLog) {
        if let Some(q) = &self.access_log {
            q.push(entry);
        }
    }
}

// === impl TraceHop ===

impl TraceHop {
    /// The span queue, when spans of this hop are recorded (sampled, and
    /// export configured).
    fn queue(&self) -> Option<&SpanQueue> {
        (self.active.spans.as_ref()).filter(|_| self.context.sampled)
    }

    /// Whether spans of this hop are recorded (sampled, and export
    /// configured). Says nothing about whether the exporter takes spans
    /// now: see [`TraceHop::begin_span`].
    pub fn recording(&self) -> bool {
        self.queue().is_some()
    }

    /// Whether to gather a span's attributes now: false when the hop is not
    /// recorded, and false when the exporter is backing off after a failed
    /// export, in which case the span is counted as dropped here (it will
    /// not be recorded, so its caller need not copy anything for it).
    pub fn begin_span(&self) -> bool {
        match self.queue() {
            None => false,
            Some(q) if q.accepting() => true,
            Some(q) => {
                q.count_dropped();
                false
            }
        }
    }

    /// The export state this hop started with.
    pub fn active(&self) -> &Arc<Active> {
        &self.active
    }

    /// A child context for the next attempt, and its attempt number (1 for
    /// the first try).
    pub fn next_attempt(&self) -> (TraceContext, u32) {
        let n = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let mut child = self.context.clone();
        child.parent_span_id = Some(self.context.span_id);
        child.span_id = SpanId::random();
        (child, n)
    }

    /// Records a finished span of `kind` for `context` (this hop's own or
    /// an attempt's). The span is built only if the queue takes it; if it
    /// does not (full, or the exporter backing off) it is counted as
    /// dropped.
    pub fn record(
        &self,
        kind: HopKind,
        context: &TraceContext,
        start: SystemTime,
        outcome: SpanOutcome,
    ) {
        if let Some(queue) = self.queue() {
            queue.push_with(|| span_data(kind, context, start, outcome));
        }
    }
}

/// `method` as a span attribute: static for the standard methods (no
/// allocation), copied otherwise.
pub fn method_text(method: &Method) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().find(|m| **m == method.as_str()) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(method.as_str().to_string()),
    }
}

/// The protocol version as spans and access logs show it (`HTTP/1.1`).
pub fn version_text(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Attributes a span can carry, at most: reserved at once.
const MAX_ATTRIBUTES: usize = 13;

pub(crate) fn span_data(
    kind: HopKind,
    ctx: &TraceContext,
    start: SystemTime,
    o: SpanOutcome,
) -> SpanData {
    let (name, span_kind) = match kind {
        HopKind::Inbound => ("inbound", SpanKind::Server),
        HopKind::Outbound => ("outbound", SpanKind::Client),
        HopKind::Attempt => ("outbound.attempt", SpanKind::Client),
    };
    // Server spans fail on 5xx only; client spans on 4xx too (OTel HTTP).
    let failed = o.status == 0
        || o.status >= 500
        || (o.status >= 400 && span_kind == SpanKind::Client)
        || o.flags != "-";
    let status = if failed {
        Status::error(format!("{} {}", o.status, o.flags))
    } else {
        Status::Unset
    };
    let mut attrs = Vec::with_capacity(MAX_ATTRIBUTES);
    if let Some(n) = o.attempt {
        attrs.push(KeyValue::new("sane.attempt", i64::from(n)));
    }
    attrs.extend([
        KeyValue::new("http.request.method", o.method),
        KeyValue::new("url.path", o.path),
        KeyValue::new("server.address", o.authority),
        KeyValue::new("network.protocol.version", o.protocol_version),
        KeyValue::new("http.response.status_code", i64::from(o.status)),
        KeyValue::new("sane.response_flags", o.flags),
        KeyValue::new("sane.route", o.service),
        KeyValue::new("sane.request_id", o.request_id),
    ]);
    if let Some(peer) = o.peer_identity {
        attrs.push(KeyValue::new("sane.peer.identity", peer));
    }
    if let Some(code) = o.grpc_status.and_then(|c| c.parse::<i64>().ok()) {
        attrs.push(KeyValue::new("rpc.grpc.status_code", code));
    }
    if let Some(sizes) = o.bytes {
        attrs.push(KeyValue::new(
            "http.request.body.size",
            sizes.request as i64,
        ));
        attrs.push(KeyValue::new(
            "http.response.body.size",
            sizes.response as i64,
        ));
    }
    let flags = if ctx.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let remote_parent = !matches!(kind, HopKind::Attempt) && ctx.parent_span_id.is_some();
    SpanData {
        span_context: SpanContext::new(
            OtelTraceId::from_bytes(ctx.trace_id.0),
            opentelemetry::trace::SpanId::from_bytes(ctx.span_id.0),
            flags,
            false,
            TraceState::NONE,
        ),
        parent_span_id: ctx
            .parent_span_id
            .map_or(opentelemetry::trace::SpanId::INVALID, |p| {
                opentelemetry::trace::SpanId::from_bytes(p.0)
            }),
        parent_span_is_remote: remote_parent,
        span_kind,
        name: Cow::Borrowed(name),
        start_time: start,
        end_time: SystemTime::now(),
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder("sane-proxy").build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sane_xds_proto::{MeshResources, Node, Telemetry};

    fn telemetry(name: &str, ns: &str, endpoint: &str) -> Telemetry {
        Telemetry {
            name: name.into(),
            namespace: ns.into(),
            tracing: Some(TracingConfig {
                endpoint: endpoint.into(),
                ..Default::default()
            }),
            access_log: None,
        }
    }

    #[test]
    fn a_node_applies_the_first_telemetry_of_its_namespace() {
        let b = Bootstrap {
            node: Node {
                namespace: "shop".into(),
                workload: "web".into(),
                ..Default::default()
            },
            resources: MeshResources {
                telemetry: vec![
                    telemetry("z", "shop", "http://z:4317"),
                    telemetry("a", "other", "http://other:4317"),
                    telemetry("b", "shop", "http://b:4317"),
                ],
                ..Default::default()
            },
            ..Default::default()
        };
        let s = TelemetrySettings::for_node(&b);
        assert_eq!(s.tracing.unwrap().endpoint, "http://b:4317");
        assert_eq!(s.service_name, "web");
        assert_eq!(
            TelemetrySettings::for_node(&Bootstrap::default()),
            TelemetrySettings {
                service_name: "sane-proxy".into(),
                ..Default::default()
            }
        );
    }

    #[tokio::test]
    async fn spans_of_an_unsampled_or_unconfigured_hop_are_not_recorded() {
        let tracer = Tracer::new(&Registry::new()).unwrap();
        let off = Arc::new(TelemetrySettings::default());
        let active = tracer.active(&off);
        let hop = active.start_hop(&http::HeaderMap::new());
        assert!(!hop.context.sampled, "nothing exports, so nothing samples");
        assert!(!hop.recording());
        // Same settings, same state: no rebuild on the hot path.
        assert!(Arc::ptr_eq(&tracer.active(&off), &active));

        let settings = TelemetrySettings {
            tracing: Some(TracingConfig {
                endpoint: "http://127.0.0.1:9".into(),
                sampling_ratio: Some(1.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let on = tracer.active(&Arc::new(settings));
        let hop = on.start_hop(&http::HeaderMap::new());
        assert!(hop.context.sampled && hop.recording());
        let (attempt, n) = hop.next_attempt();
        assert_eq!(n, 1);
        assert_eq!(attempt.parent_span_id, Some(hop.context.span_id));
        assert_eq!(attempt.trace_id, hop.context.trace_id);
        assert_eq!(hop.next_attempt().1, 2);
    }

    /// `sane_trace_spans_total{result}` in `registry`.
    fn spans_counted(registry: &Registry, result: &str) -> u64 {
        (registry.gather().iter())
            .filter(|f| f.name() == "sane_trace_spans_total")
            .flat_map(|f| f.get_metric())
            .filter(|m| m.get_label().iter().any(|l| l.value() == result))
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    #[tokio::test]
    async fn a_backing_off_exporter_skips_span_building_but_not_propagation() {
        let registry = Registry::new();
        let metrics = TraceMetrics::register(&registry).unwrap();
        let (queue, mut spans) = SpanQueue::capture(metrics);
        let health = queue.health().clone();
        let active = Arc::new(Active {
            settings: Arc::new(TelemetrySettings::default()),
            spans: Some(queue),
            sample_ratio: 1.0,
            access_log: None,
        });
        health.set_backing_off(true);
        let hop = active.start_hop(&http::HeaderMap::new());
        assert!(hop.context.sampled && hop.recording());

        // Nothing is gathered or built, and both spans are counted.
        assert!(!hop.begin_span());
        hop.record(
            HopKind::Inbound,
            &hop.context,
            SystemTime::now(),
            SpanOutcome::default(),
        );
        assert!(spans.try_recv().is_err());
        assert_eq!(spans_counted(&registry, "dropped"), 2);

        // The context still goes to the next hop, sampled.
        let mut next = http::HeaderMap::new();
        hop.context.inject(&mut next);
        let sent = TraceContext::extract(&next, false);
        assert_eq!(sent.trace_id, hop.context.trace_id);
        assert_eq!(sent.parent_span_id, Some(hop.context.span_id));
        assert!(sent.sampled);

        // The exporter recovers: spans are built and queued again.
        health.set_backing_off(false);
        assert!(hop.begin_span());
        hop.record(
            HopKind::Inbound,
            &hop.context,
            SystemTime::now(),
            SpanOutcome {
                path: "/a".into(),
                ..Default::default()
            },
        );
        let span = spans.try_recv().expect("recorded once recovered");
        assert!(span
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "url.path" && kv.value.as_str() == "/a"));
        assert_eq!(spans_counted(&registry, "dropped"), 2);
    }

    #[test]
    fn method_and_version_texts_are_the_usual_ones() {
        assert_eq!(method_text(&Method::GET), "GET");
        assert!(matches!(method_text(&Method::PATCH), Cow::Borrowed(_)));
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_text(&custom), "PURGE");
        assert_eq!(version_text(Version::HTTP_11), "HTTP/1.1");
        assert_eq!(version_text(Version::HTTP_2), "HTTP/2.0");
        assert_eq!(
            version_text(Version::HTTP_2),
            format!("{:?}", Version::HTTP_2)
        );
    }

    #[test]
    fn span_data_links_to_the_parent() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "b3",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"
                .parse()
                .unwrap(),
        );
        let ctx = TraceContext::extract(&h, false);
        let o = SpanOutcome {
            method: method_text(&Method::GET),
            status: 503,
            flags: "UO".into(),
            ..Default::default()
        };
        let s = span_data(HopKind::Inbound, &ctx, SystemTime::now(), o);
        assert_eq!(
            s.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(s.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(s.parent_span_is_remote);
        assert_eq!(s.span_kind, SpanKind::Server);
        assert!(matches!(s.status, Status::Error { .. }));
    }
}
